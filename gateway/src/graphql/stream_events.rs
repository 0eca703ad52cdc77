//! Streams as auditors read them: each event's envelope with its decoded
//! payload, live from a cursor (`streamEvents`) or a page at a time
//! (`streamHistory`). Payload fields that hold hashes or tokens show as
//! `"[redacted]"`, as the audit view's summaries leave them out.

use async_graphql::{Context, Json, Object, SimpleObject, Subscription};
use std::collections::VecDeque;

use domain::replay::redact_secrets;
use domain::{EventRegistry, RecordedEvent, StreamId};
use futures_util::{Stream, StreamExt};
use store::{Direction, Filter, StreamFrom};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::graphql::error;
use crate::graphql::error::Code;
use crate::graphql::session_watch::{Seen, under_session};
use crate::graphql::{AUDITORS, app, check_first, cursor, principal_with};
use crate::time_travel::{TimeTravelError, stream_at};
use domain::log_point::LogPoint;

/// One event with everything recorded about it.
#[derive(SimpleObject)]
pub struct EventEnvelope {
    /// The event's global position; also the cursor to resume after it.
    pub position: String,
    pub event_id: Uuid,
    pub event_type: String,
    /// The schema version the payload was stored under (`payload` is
    /// upcast to this build's current one).
    pub schema_version: u32,
    pub stream_id: String,
    /// 0 for a stream's first event.
    pub stream_version: i64,
    pub recorded_at: OffsetDateTime,
    pub actor: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// Which process wrote it: `gateway`, `runner:<id>`, `cli`.
    pub source: Option<String>,
    /// The audit log's one line for it.
    pub summary: String,
    /// The decoded payload, hashes and tokens redacted; null when this
    /// build cannot decode it (`summary` says what it is).
    pub payload: Option<Json<serde_json::Value>>,
}

impl EventEnvelope {
    /// `event`'s envelope, its payload decoded by `registry`.
    pub fn of(registry: &EventRegistry, event: &RecordedEvent) -> Self {
        let payload = registry.to_json(event).ok().map(|mut json| {
            redact_secrets(&mut json);
            Json(json)
        });
        Self {
            position: event.position.to_string(),
            event_id: event.id.0,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            stream_id: event.stream_id.to_string(),
            stream_version: i64::try_from(event.stream_version).unwrap_or(i64::MAX),
            recorded_at: event.recorded_at,
            actor: event.metadata.actor.clone(),
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            source: event.metadata.source.clone(),
            summary: projections::audit_view::summarize(event),
            payload,
        }
    }
}

fn stream_id(field: &str, value: &str) -> async_graphql::Result<StreamId> {
    StreamId::parse(value).map_err(|e| error::invalid(field, e))
}

/// One page of a stream, oldest first.
#[derive(SimpleObject)]
pub struct StreamHistoryPage {
    pub events: Vec<EventEnvelope>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A stream's state at a point of the log, as its decider folds it.
#[derive(SimpleObject)]
pub struct StreamState {
    pub stream_id: String,
    /// Names the state's shape: the decider's snapshot kind (`job/3`).
    pub kind: String,
    /// The folded state, hashes and tokens redacted.
    pub state: Json<serde_json::Value>,
    /// How many events were folded.
    pub event_count: i64,
    /// The last event folded: where the state stands.
    pub last_event: EventEnvelope,
    /// The events that led there (the last `lastEvents` of them), oldest
    /// first.
    pub events: Vec<EventEnvelope>,
}

#[derive(Default)]
pub struct StreamEventsQuery;

#[Object]
impl StreamEventsQuery {
    /// One stream's events with their envelopes, oldest first, by cursor
    /// (auditors and admins).
    async fn stream_history(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        #[graphql(default = 50)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<StreamHistoryPage> {
        principal_with(ctx, AUDITORS, "reading a stream's history")?;
        check_first(first)?;
        let stream = self::stream_id("streamId", &stream_id)?;
        // The cursor is the last stream version shown.
        let from = match &after {
            None => StreamFrom::Start,
            Some(c) => {
                let version: u64 = c.parse().map_err(|_| {
                    error::invalid(
                        "after",
                        format!("{c:?} is not a cursor returned by streamHistory"),
                    )
                })?;
                StreamFrom::Version(version.saturating_add(1))
            }
        };
        let app = app(ctx);
        let mut events = app
            .store
            .read_stream(&stream, from, Direction::Forward, first as usize + 1)
            .await
            .map_err(|e| error::internal("cannot read the stream", &e))?;
        let more = events.len() > first as usize;
        events.truncate(first as usize);
        let registry = app.handler.registry();
        let next_cursor = more
            .then(|| events.last().map(|e| e.stream_version.to_string()))
            .flatten();
        Ok(StreamHistoryPage {
            events: events
                .iter()
                .map(|e| EventEnvelope::of(registry, e))
                .collect(),
            next_cursor,
        })
    }

    /// A stream's state as it stood at `at` (a position, or an RFC 3339
    /// time; now when absent), folded by its own decider, with the events
    /// that led there (auditors and admins).
    async fn stream_state(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        at: Option<String>,
        #[graphql(default = 20)] last_events: i32,
    ) -> async_graphql::Result<StreamState> {
        principal_with(ctx, AUDITORS, "replaying a stream")?;
        check_first(last_events)?;
        let stream = self::stream_id("streamId", &stream_id)?;
        let at = match at.as_deref() {
            None => LogPoint::Now,
            Some(text) => text.parse().map_err(|e| error::invalid("at", e))?,
        };
        let app = app(ctx);
        let registry = app.handler.registry();
        let keep = last_events as usize;
        let mut recent = VecDeque::with_capacity(keep);
        let found = stream_at(app.store.as_ref(), registry, &stream, at, |e| {
            if recent.len() == keep {
                recent.pop_front();
            }
            recent.push_back(EventEnvelope::of(registry, e));
        })
        .await;
        let found = match found {
            Ok(found) => found,
            Err(e @ TimeTravelError::NoEvents { .. }) => {
                return Err(error::error(Code::NotFound, e.to_string()));
            }
            Err(e @ TimeTravelError::Replay(_)) => return Err(error::invalid("streamId", e)),
            Err(e @ TimeTravelError::Store { .. }) => {
                return Err(error::internal("cannot replay the stream", &e));
            }
        };
        let state = found
            .fold
            .state()
            .map_err(|e| error::internal("cannot show the state", &e))?;
        Ok(StreamState {
            stream_id: stream.to_string(),
            kind: found.fold.kind().to_owned(),
            state: Json(state),
            event_count: i64::try_from(found.fold.events()).unwrap_or(i64::MAX),
            last_event: EventEnvelope::of(registry, &found.last),
            events: recent.into(),
        })
    }
}

#[derive(Default)]
pub struct StreamEventsSubscription;

#[Subscription]
impl StreamEventsSubscription {
    /// The events of one stream (`streamId`) or of every stream whose id
    /// starts with `prefix`, with their envelopes: those after `after`
    /// first, then new ones as they happen, each once (auditors and admins).
    async fn stream_events(
        &self,
        ctx: &Context<'_>,
        stream_id: Option<String>,
        prefix: Option<String>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = EventEnvelope>> {
        let p = principal_with(ctx, AUDITORS, "watching the event streams")?.clone();
        let (filter, exact) = match (stream_id, prefix) {
            (Some(id), None) => {
                let id = self::stream_id("streamId", &id)?;
                (Filter::stream_prefix(id.as_str()), Some(id))
            }
            (None, Some(prefix)) if !prefix.is_empty() => (Filter::stream_prefix(prefix), None),
            (None, Some(_)) => {
                return Err(error::invalid(
                    "prefix",
                    "give the start of a stream id, such as `account-`",
                ));
            }
            _ => {
                return Err(error::invalid(
                    "streamId",
                    "give exactly one of `streamId` and `prefix`",
                ));
            }
        };
        let after = cursor("after", after.as_deref())?;
        let app = app(ctx).clone();
        Ok(
            under_session(app.clone(), p, Some(filter), after).filter_map(move |seen| {
                let envelope = match seen {
                    Seen::Event(e) if exact.as_ref().is_none_or(|id| *id == e.stream_id) => {
                        Some(EventEnvelope::of(app.handler.registry(), &e))
                    }
                    _ => None,
                };
                async move { envelope }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use domain::account::{
        AccountCreated, AccountEvent, PasswordHash, SessionId, SessionStarted, SessionTokens,
        TokenHash, Username,
    };
    use domain::runner_key::{RunnerKeyCreated, RunnerKeyEvent, RunnerKeyId};
    use domain::target_domain::{DomainClaimed, TargetDomainEvent, VerificationToken};
    use domain::{EventSet, Metadata, Position, Role};

    use super::*;

    fn recorded(stream: &str, event: &impl EventSet) -> RecordedEvent {
        event.to_new_event(Metadata::default()).unwrap().recorded(
            StreamId::parse(stream).unwrap(),
            3,
            Position::new(9, 2),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn envelopes_decode_payloads_but_never_show_hashes() {
        let registry = domain::event_registry();
        let created = recorded(
            "account-ada",
            &AccountEvent::AccountCreated(AccountCreated {
                account_id: Uuid::from_u128(1),
                username: Username::parse("ada").unwrap(),
                roles: [Role::Auditor].into(),
                password_hash: PasswordHash("$argon2id$secret-hash".into()),
                by: "root".into(),
            }),
        );
        let envelope = EventEnvelope::of(&registry, &created);
        let payload = envelope.payload.expect("a registered event decodes").0;
        assert_eq!(payload["username"], "ada");
        assert_eq!(payload["password_hash"], "[redacted]");
        assert_eq!(envelope.position, "9:2");
        assert_eq!(envelope.stream_version, 3);

        let started = recorded(
            "account-ada",
            &AccountEvent::SessionStarted(SessionStarted {
                session_id: SessionId(Uuid::from_u128(2)),
                tokens: SessionTokens {
                    refresh_token_hash: TokenHash("refresh-secret-hash".into()),
                    expires_at: OffsetDateTime::UNIX_EPOCH,
                    refresh_until: OffsetDateTime::UNIX_EPOCH,
                },
                client_ip: None,
                user_agent: None,
            }),
        );
        let shown =
            serde_json::to_string(&EventEnvelope::of(&registry, &started).payload).expect("JSON");
        assert!(!shown.contains("refresh-secret-hash"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");

        let key = recorded(
            "runnerkeys",
            &RunnerKeyEvent::RunnerKeyCreated(RunnerKeyCreated {
                key: RunnerKeyId(Uuid::from_u128(3)),
                name: "fleet".into(),
                hash: TokenHash("runner-key-hash".into()),
                by: "root".into(),
            }),
        );
        let token = "t".repeat(40);
        let claim = recorded(
            "domain-example.com",
            &TargetDomainEvent::DomainClaimed(DomainClaimed {
                account: Username::parse("ada").unwrap(),
                token: VerificationToken::parse(&token).unwrap(),
                by: "ada".into(),
            }),
        );
        for (event, secret) in [(key, "runner-key-hash"), (claim, token.as_str())] {
            let payload = EventEnvelope::of(&registry, &event)
                .payload
                .expect("decodes")
                .0;
            let shown = payload.to_string();
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }
}
