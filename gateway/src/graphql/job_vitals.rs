//! A job's Web Vitals per target over GraphQL: the p50 and p95 of each
//! vital over the target's pages that measured it, read from the jobs
//! view's histograms. Like the p95 page load, a percentile is the upper
//! bound of the bucket holding it (above the last bucket: 4294967295).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_graphql::SimpleObject;
use domain::web_vitals::Vital;
use projections::{SqlValue, jobs_view};

use crate::graphql::error;
use crate::state::AppState;

/// One vital's percentiles over a target's pages.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct VitalPercentiles {
    /// Pages that measured it.
    pub pages: u64,
    /// Half the pages measured at most this: ms, or for CLS its score.
    pub p50: f64,
    /// 95% of the pages measured at most this.
    pub p95: f64,
}

/// A target's Web Vitals; a vital no page measured yet is null.
#[derive(SimpleObject, Clone, Default, PartialEq)]
pub struct TargetVitals {
    /// Time to first byte.
    pub ttfb_ms: Option<VitalPercentiles>,
    /// First contentful paint.
    pub fcp_ms: Option<VitalPercentiles>,
    /// Largest contentful paint.
    pub lcp_ms: Option<VitalPercentiles>,
    /// Cumulative layout shift, as its score.
    pub cls: Option<VitalPercentiles>,
    /// Interaction to next paint.
    pub inp_ms: Option<VitalPercentiles>,
}

static VITALS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT target, vital, upto, pages FROM {} WHERE job = $1 AND target > $2 AND target <= $3",
        jobs_view::VITALS
    )
});

/// The vitals of `job`'s targets after `after` up to `last`, by target.
pub(crate) async fn vitals_of(
    app: &AppState,
    job: &str,
    after: i64,
    last: i64,
) -> async_graphql::Result<BTreeMap<u32, TargetVitals>> {
    let rows = app
        .views
        .query(
            &VITALS,
            vec![
                SqlValue::from(job),
                SqlValue::from(after),
                SqlValue::from(last),
            ],
        )
        .await
        .map_err(|e| error::internal("cannot read the job's Web Vitals", &e))?;
    let mut buckets: BTreeMap<(u32, Vital), Vec<(u32, u64)>> = BTreeMap::new();
    for row in &rows {
        let read = || -> Option<((u32, Vital), (u32, u64))> {
            let target = u32::try_from(row.get::<i64>("target").ok()?).ok()?;
            let vital = Vital::named(&row.get::<String>("vital").ok()?)?;
            let upto = u32::try_from(row.get::<i64>("upto").ok()?).ok()?;
            let pages = u64::try_from(row.get::<i64>("pages").ok()?).ok()?;
            Some(((target, vital), (upto, pages)))
        };
        if let Some((key, bucket)) = read() {
            buckets.entry(key).or_default().push(bucket);
        }
    }
    let mut out: BTreeMap<u32, TargetVitals> = BTreeMap::new();
    for ((target, vital), b) in buckets {
        let scale = if vital == Vital::Cls { 1000.0 } else { 1.0 };
        let at = |pct| jobs_view::percentile(&b, pct).map(|v| f64::from(v) / scale);
        let (Some(p50), Some(p95)) = (at(50), at(95)) else {
            continue;
        };
        let found = Some(VitalPercentiles {
            pages: b.iter().map(|(_, n)| n).sum(),
            p50,
            p95,
        });
        let v = out.entry(target).or_default();
        match vital {
            Vital::Ttfb => v.ttfb_ms = found,
            Vital::Fcp => v.fcp_ms = found,
            Vital::Lcp => v.lcp_ms = found,
            Vital::Cls => v.cls = found,
            Vital::Inp => v.inp_ms = found,
        }
    }
    Ok(out)
}
