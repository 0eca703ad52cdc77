//! Flows that do no work: each takes a set time (zero, or a stand-in for
//! real work) and ends succeeded, having loaded one page and clicked
//! nothing. The orchestrator's recovery tests and its benchmark run fleets
//! of workers on these; what they prove about leases, reports and recovery
//! holds for browser runners, which run the same work loop and differ only
//! in what a flow does.

use std::future::Future;
use std::time::Duration;

use domain::flow::{FlowFinished, FlowOutcome, PageLoad};
use domain::web_vitals::PageVitals;

use crate::worker::{Executor, Finished, Order, Progress};

/// Runs `capacity` flows at once, each taking `work`.
#[derive(Debug, Clone, Copy)]
pub struct ZeroWorkExecutor {
    pub capacity: u32,
    pub work: Duration,
}

impl Executor for ZeroWorkExecutor {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn run(
        &self,
        order: Order,
        _progress: Progress,
    ) -> impl Future<Output = Finished> + Send + 'static {
        let work = self.work;
        async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            Finished {
                report: FlowFinished {
                    flow: order.flow,
                    outcome: FlowOutcome::Succeeded,
                    duration_ms: work.as_millis() as u64,
                    proxy: None,
                    pages: vec![PageLoad {
                        ms: 1,
                        status: Some(200),
                        vitals: PageVitals::default(),
                    }],
                    clicks: Vec::new(),
                    artifacts: Vec::new(),
                },
                rest: Duration::ZERO,
                artifacts: Vec::new(),
            }
        }
    }
}
