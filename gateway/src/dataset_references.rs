//! Who uses a dataset: the jobs and schedules that refer to one of its
//! versions, which the dataset decider will not let it be deleted under.
//! The one place that asks; jobs and schedules (issue 10) answer here.
//! Until they exist, nothing refers to a dataset.

use domain::dataset::{DatasetId, Referrer};

use crate::state::AppState;

/// Every job and schedule that refers to a version of `dataset`.
pub async fn referrers(
    _app: &AppState,
    _dataset: DatasetId,
) -> Result<Vec<Referrer>, store::StoreError> {
    Ok(Vec::new())
}
