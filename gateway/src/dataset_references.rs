//! Who uses a dataset: the jobs (and, later, schedules) that refer to one
//! of its versions, which the dataset decider will not let it be deleted
//! under. The one place that asks. A job refers to its versions until it
//! ends: an ended job's log and figures stand without them.

use std::sync::LazyLock;

use domain::dataset::{DatasetId, Referrer, ReferrerKind};
use projections::{SqlValue, jobs_view};

use crate::state::AppState;

/// Jobs not ended that reference a version of `$1`.
static JOBS_USING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT d.job, d.version FROM {} d JOIN {} j ON j.job = d.job \
         WHERE d.dataset = $1 AND j.status NOT IN ('done', 'failed', 'stopped') \
         ORDER BY d.job, d.version",
        jobs_view::DATASETS,
        jobs_view::JOBS
    )
});

/// Every job and schedule that refers to a version of `dataset`.
pub async fn referrers(
    app: &AppState,
    dataset: DatasetId,
) -> Result<Vec<Referrer>, projections::ViewError> {
    let rows = app
        .views
        .query(&JOBS_USING, vec![SqlValue::from(dataset.0.to_string())])
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let job: String = r.get("job").ok()?;
            let version: i64 = r.get("version").ok()?;
            Some(Referrer {
                kind: ReferrerKind::Job,
                id: job,
                version: u32::try_from(version).ok()?,
            })
        })
        .collect())
}
