//! The runners connected to this gateway: how to reach each connection.
//! What their heartbeats say (busy browsers, last heard) is kept in the
//! store for every gateway to see: see [`super::presence`].
//!
//! What other parts decide for a runner (an admin's drain, a job paused or
//! stopped, a lease expired by any gateway's sweep, its key revoked, a
//! proxy of a job it was briefed on disabled or enabled again) reaches it
//! through [`relay`], which follows the log: whichever gateway appended the
//! event, the one holding the runner's connection passes it on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use domain::job::{DatasetVersionRef, JobEvent, JobId};
use domain::proxy_pool::{self, ProxyPoolEvent};
use domain::runner::{RunnerEvent, RunnerId};
use domain::runner_key::{RunnerKeyEvent, RunnerKeyId};
use domain::runner_protocol::{ErrorCode, GatewayMessage, ProtocolError};
use domain::{EventRegistry, RecordedEvent};
use tokio::sync::{broadcast, mpsc};

use crate::runner_link::targets::Targets;
use uuid::Uuid;

/// Messages queued for one connection before it counts as stuck.
pub const NOTICE_QUEUE: usize = 256;

struct Linked {
    connection: u64,
    /// The key it authenticated with.
    key: RunnerKeyId,
    notices: mpsc::Sender<GatewayMessage>,
    /// The jobs this connection was sent the brief of, with their proxy
    /// pools: it hears of those pools' proxies being disabled or enabled.
    briefed: HashMap<JobId, Option<DatasetVersionRef>>,
}

/// The runners connected here.
#[derive(Default)]
pub struct Fleet {
    linked: Mutex<HashMap<RunnerId, Linked>>,
    next_connection: AtomicU64,
    /// The targets the lease grants of this gateway carry.
    pub targets: Targets,
    /// One turn-taking lock per stream: see [`Fleet::turn`].
    turns: Mutex<HashMap<domain::StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A connection's place in the fleet; leaving it frees the place, unless a
/// newer connection of the same runner took it meanwhile.
pub struct Attachment<'a> {
    fleet: &'a Fleet,
    runner: RunnerId,
    connection: u64,
}

impl Attachment<'_> {
    /// Is this still the runner's connection here (no newer one replaced it)?
    pub fn is_current(&self) -> bool {
        self.fleet
            .lock()
            .get(&self.runner)
            .is_some_and(|l| l.connection == self.connection)
    }

    /// The connection's number in the fleet.
    pub fn connection(&self) -> u64 {
        self.connection
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let mut linked = self.fleet.lock();
        if linked
            .get(&self.runner)
            .is_some_and(|l| l.connection == self.connection)
        {
            linked.remove(&self.runner);
        }
    }
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerId, Linked>> {
        self.linked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the runner's connection; a connection it had here before is
    /// dropped from the fleet (its notices end, so it closes).
    pub fn attach(
        &self,
        runner: RunnerId,
        key: RunnerKeyId,
        notices: mpsc::Sender<GatewayMessage>,
    ) -> Attachment<'_> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            runner,
            Linked {
                connection,
                key,
                notices,
                briefed: HashMap::new(),
            },
        );
        Attachment {
            fleet: self,
            runner,
            connection,
        }
    }

    /// The lock commands on `stream` (a job's, a proxy pool's) from this
    /// gateway's connections take turns on, so that they queue instead of
    /// racing each other into version conflicts on the stream. In memory
    /// and per gateway: between gateways the store's optimistic
    /// concurrency decides.
    pub fn turn(&self, stream: &domain::StreamId) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if turns.len() > 1024 {
            turns.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        turns.entry(stream.clone()).or_default().clone()
    }

    /// How many runners are connected here.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that connection `connection` of `runner` has the brief of
    /// `job`, whose proxies are `pool`: from now on it hears of them.
    /// Recorded before the brief is read, so that no change after the read
    /// goes unheard.
    pub fn briefed(
        &self,
        runner: RunnerId,
        connection: u64,
        job: JobId,
        pool: Option<DatasetVersionRef>,
    ) {
        if let Some(l) = self.lock().get_mut(&runner)
            && l.connection == connection
        {
            l.briefed.insert(job, pool);
        }
    }

    /// Has connection `connection` of `runner` been sent the brief of `job`?
    pub fn has_brief(&self, runner: RunnerId, connection: u64, job: JobId) -> bool {
        self.lock()
            .get(&runner)
            .is_some_and(|l| l.connection == connection && l.briefed.contains_key(&job))
    }

    /// Forgets a brief that could not be sent.
    pub fn unbriefed(&self, runner: RunnerId, connection: u64, job: JobId) {
        if let Some(l) = self.lock().get_mut(&runner)
            && l.connection == connection
        {
            l.briefed.remove(&job);
        }
    }

    /// Queues, for every connection here briefed on a job whose proxies
    /// are `pool`, the message `about` makes for that job.
    pub fn notify_pool(&self, pool: DatasetVersionRef, about: impl Fn(JobId) -> GatewayMessage) {
        for l in self.lock().values() {
            for (&job, _) in l.briefed.iter().filter(|(_, p)| **p == Some(pool)) {
                let _ = l.notices.try_send(about(job));
            }
        }
    }

    /// Queues a message for one runner, if it is connected here. A runner
    /// whose queue is full is not waited for: its connection is behind, and
    /// the message is one it also learns by its next request's answer.
    pub fn notify(&self, runner: RunnerId, message: GatewayMessage) {
        if let Some(l) = self.lock().get(&runner) {
            let _ = l.notices.try_send(message);
        }
    }

    /// Queues a message for every runner connected here with `key`.
    pub fn notify_key(&self, key: RunnerKeyId, message: &GatewayMessage) {
        for l in self.lock().values().filter(|l| l.key == key) {
            let _ = l.notices.try_send(message.clone());
        }
    }

    /// Queues a message for every runner connected here.
    pub fn notify_all(&self, message: &GatewayMessage) {
        for l in self.lock().values() {
            let _ = l.notices.try_send(message.clone());
        }
    }
}

/// A message for each job a connection was briefed on, by job.
type PerJob = Box<dyn Fn(JobId) -> GatewayMessage + Send>;

/// Whom an event concerns, and what to tell them.
enum Relay {
    One(RunnerId, GatewayMessage),
    Key(RunnerKeyId, GatewayMessage),
    All(GatewayMessage),
    Pool(DatasetVersionRef, PerJob),
}

/// What a runner must hear of `event`, if anything.
fn relayed(registry: &EventRegistry, event: &RecordedEvent) -> Option<Relay> {
    // Most of the log (reports above all) concerns no connection: skip it
    // by its type, undecoded.
    const RELAYED: &[&str] = &[
        "DrainRequested",
        "JobPaused",
        "JobHalted",
        "JobStopped",
        "JobFailed",
        "JobCompleted",
        "LeaseExpired",
        "RunnerKeyRevoked",
        "ProxyDisabled",
        "ProxyReEnabled",
    ];
    if !RELAYED.contains(&event.event_type.as_str()) {
        return None;
    }
    let stream = event.stream_id.as_str();
    if let Ok(RunnerKeyEvent::RunnerKeyRevoked(r)) = registry.decode::<RunnerKeyEvent>(event) {
        let refused = ProtocolError::new(
            ErrorCode::Unauthenticated,
            format!(
                "runner key {} was revoked by {}; ask an admin for a new one (createRunnerKey)",
                r.key, r.by
            ),
        );
        return Some(Relay::Key(
            r.key,
            GatewayMessage::Error(refused.into_message()),
        ));
    }
    if let Some(pool) = proxy_pool::pool_of(stream) {
        return match registry.decode::<ProxyPoolEvent>(event).ok()? {
            ProxyPoolEvent::ProxyDisabled(d) => {
                let reason = if d.on_trial {
                    format!("it failed again on trial (last: {})", d.last_error)
                } else {
                    format!(
                        "{} failures within {} s (last: {})",
                        d.failures, d.within_s, d.last_error
                    )
                };
                Some(Relay::Pool(
                    pool,
                    Box::new(move |job| GatewayMessage::ProxyDisabled {
                        job,
                        proxy: d.proxy,
                        reason: reason.clone(),
                    }),
                ))
            }
            ProxyPoolEvent::ProxyReEnabled(e) => Some(Relay::Pool(
                pool,
                Box::new(move |job| GatewayMessage::ProxyEnabled {
                    job,
                    proxy: e.proxy,
                }),
            )),
            _ => None,
        };
    }
    if let Some(id) = stream.strip_prefix("runner-") {
        let runner = RunnerId(Uuid::parse_str(id).ok()?);
        return match registry.decode::<RunnerEvent>(event).ok()? {
            RunnerEvent::DrainRequested(d) => {
                Some(Relay::One(runner, GatewayMessage::Drain { by: d.by }))
            }
            _ => None,
        };
    }
    let job = JobId(Uuid::parse_str(stream.strip_prefix("job-")?).ok()?);
    match registry.decode::<JobEvent>(event).ok()? {
        JobEvent::JobPaused(_) => Some(Relay::All(GatewayMessage::JobPaused { job })),
        // Halted (safe mode, consent lost): its leases are gone and its
        // flows must stop now, as for a stop; it may be resumed later.
        JobEvent::JobStopped(_)
        | JobEvent::JobFailed(_)
        | JobEvent::JobCompleted(_)
        | JobEvent::JobHalted(_) => Some(Relay::All(GatewayMessage::JobStopped { job })),
        JobEvent::LeaseExpired(e) => Some(Relay::One(
            e.runner,
            GatewayMessage::LeaseExpired {
                job,
                flows: e.flows,
            },
        )),
        _ => None,
    }
}

/// Passes what runners must hear on to those connected here, as the log
/// grows, until the feed ends.
pub async fn relay(fleet: Arc<Fleet>, mut events: broadcast::Receiver<Arc<RecordedEvent>>) {
    let registry = domain::event_registry();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // Behind: what was missed reaches runners through their next
            // requests' answers (a stopped job refuses reports, an expired
            // lease refuses them too).
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "runner notices fell behind the log");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if fleet.is_empty() {
            continue;
        }
        match relayed(&registry, &event) {
            Some(Relay::One(runner, message)) => fleet.notify(runner, message),
            Some(Relay::Key(key, message)) => fleet.notify_key(key, &message),
            Some(Relay::All(message)) => fleet.notify_all(&message),
            Some(Relay::Pool(pool, about)) => fleet.notify_pool(pool, about),
            None => {}
        }
    }
}
