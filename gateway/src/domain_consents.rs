//! The consent states a job's target domains are judged by: each domain's
//! and each of its parents' (a consent covers subdomains), loaded from
//! their `target-<domain>` streams. Read when a job runs and when a runner
//! is briefed on it; [`domain::target_domain::consent_covering`] judges.

use std::collections::{BTreeMap, BTreeSet};

use domain::DomainName;
use domain::target_domain::{self, TargetDomain, TargetDomainState};

use crate::state::AppState;

/// The states of `domains` and their parents that have any history.
pub async fn states(
    app: &AppState,
    domains: &[DomainName],
) -> Result<BTreeMap<DomainName, TargetDomainState>, String> {
    let mut states = BTreeMap::new();
    // Names loaded already, with history or without.
    let mut seen = BTreeSet::new();
    for domain in domains {
        for name in std::iter::once(domain.clone()).chain(domain.parents()) {
            if !seen.insert(name.clone()) {
                continue;
            }
            let stream = target_domain::stream(&name).map_err(|e| e.to_string())?;
            let (version, state) = app
                .handler
                .load::<TargetDomain>(&stream)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            if version.is_some() {
                states.insert(name, state);
            }
        }
    }
    Ok(states)
}
