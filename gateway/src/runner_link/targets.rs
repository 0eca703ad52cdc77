//! What lease grants say of jobs' targets — each target's URL and how its
//! visits arrive (the referrer's makings) — read once per job from its
//! targets version (immutable, so never stale) and kept while it leases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datasets::{Rows, TrafficType};
use domain::DatasetKind;
use domain::job::{DatasetVersionRef, JobId};
use domain::runner_protocol::Traffic;

use crate::job_datasets;

use crate::state::AppState;

/// Jobs whose targets are kept at most; past it the oldest are read again.
const MAX_JOBS: usize = 256;

/// One target as a grant's work carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetWork {
    pub url: String,
    pub traffic: Traffic,
}

#[derive(Default)]
pub struct Targets {
    cache: Mutex<HashMap<JobId, Arc<Vec<TargetWork>>>>,
}

impl Targets {
    /// Each target of `job`, whose targets are `version`, in row order.
    pub async fn of(
        &self,
        app: &AppState,
        job: JobId,
        version: DatasetVersionRef,
    ) -> Result<Arc<Vec<TargetWork>>, String> {
        if let Some(targets) = self.lock().get(&job) {
            return Ok(targets.clone());
        }
        let targets = Arc::new(read(app, version).await?);
        let mut cache = self.lock();
        if cache.len() >= MAX_JOBS {
            cache.clear();
        }
        cache.insert(job, targets.clone());
        Ok(targets)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Vec<TargetWork>>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a target's visits arrive. The targets' import guarantees a
/// referral's source and an organic visit's engine and keyword; a row
/// without them reads as direct.
fn traffic(target: &datasets::Target) -> Traffic {
    match (target.traffic_type, &target.source, &target.keyword) {
        (TrafficType::Referral, Some(source), _) => Traffic::Referral {
            source: source.clone(),
        },
        (TrafficType::Organic, Some(engine), Some(keyword)) => Traffic::Organic {
            engine: engine.clone(),
            keyword: keyword.clone(),
        },
        _ => Traffic::Direct,
    }
}

/// Reads the targets version's rows, in row order.
async fn read(app: &AppState, version: DatasetVersionRef) -> Result<Vec<TargetWork>, String> {
    let (_, rows) = job_datasets::rows(app, version, DatasetKind::Targets)
        .await
        .map_err(|e| e.to_string())?;
    match &*rows {
        Rows::Targets(targets) => Ok(targets
            .iter()
            .map(|t| TargetWork {
                url: t.url.to_string(),
                traffic: traffic(t),
            })
            .collect()),
        other => Err(format!("the version holds {}, not targets", other.kind())),
    }
}
