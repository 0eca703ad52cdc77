//! The URLs of jobs' targets, in row order, read once per job from its
//! targets version (immutable, so never stale) and kept while it leases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datasets::Rows;
use domain::DatasetKind;
use domain::job::{DatasetVersionRef, JobId};

use crate::job_datasets;

use crate::state::AppState;

/// Jobs whose URLs are kept at most; past it the oldest are read again.
const MAX_JOBS: usize = 256;

#[derive(Default)]
pub struct TargetUrls {
    cache: Mutex<HashMap<JobId, Arc<Vec<String>>>>,
}

impl TargetUrls {
    /// The URL of each target of `job`, whose targets are `version`.
    pub async fn urls(
        &self,
        app: &AppState,
        job: JobId,
        version: DatasetVersionRef,
    ) -> Result<Arc<Vec<String>>, String> {
        if let Some(urls) = self.lock().get(&job) {
            return Ok(urls.clone());
        }
        let urls = Arc::new(read(app, version).await?);
        let mut cache = self.lock();
        if cache.len() >= MAX_JOBS {
            cache.clear();
        }
        cache.insert(job, urls.clone());
        Ok(urls)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Vec<String>>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the targets version's URLs, in row order.
async fn read(app: &AppState, version: DatasetVersionRef) -> Result<Vec<String>, String> {
    let (_, rows) = job_datasets::rows(app, version, DatasetKind::Targets)
        .await
        .map_err(|e| e.to_string())?;
    match &*rows {
        Rows::Targets(targets) => Ok(targets.iter().map(|t| t.url.to_string()).collect()),
        other => Err(format!("the version holds {}, not targets", other.kind())),
    }
}
