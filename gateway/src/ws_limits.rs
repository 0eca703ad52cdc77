//! Bounds on the GraphQL WebSocket: how large one message may be, how many
//! operations one connection may run at once, and how many connections one
//! session may hold. Past a bound the client is told which, in a close
//! reason or a GraphQL error with `extensions.code`, never dropped silently.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::{Data, Executor, Request, Response};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use domain::account::SessionId;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};

use crate::graphql::ApiSchema;
use crate::graphql::error::{Code, error};

/// Largest WebSocket message (and frame) accepted: the HTTP body limit, so
/// a query too large for POST is not welcome over the socket either.
pub const MAX_MESSAGE_BYTES: usize = crate::request_body::MAX_BODY_BYTES;

/// Most operations (in practice subscriptions) one connection runs at once.
/// A UI multiplexes every live view of a tab on one connection and watches a
/// handful; 32 leaves room while bounding each connection's feed tasks and
/// their 256-item queues.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 32;

/// Most connections one session holds at once: one per open browser tab
/// (clients share one socket per tab), and 8 tabs of one login is plenty.
/// With the cap above, a session runs at most 256 subscriptions.
pub const MAX_CONNECTIONS_PER_SESSION: usize = 8;

/// Serves one GraphQL WebSocket under the bounds above; `on_init` checks
/// the `connection_init` payload and returns the connection's data.
pub async fn serve<F, R>(
    socket: WebSocket,
    schema: ApiSchema,
    protocol: GraphQLProtocol,
    on_init: F,
) where
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
{
    let (mut sink, stream) = socket.split();
    // A read error ends async-graphql's loop without a word to the client;
    // remember it, to say why in the close frame.
    let failed: Arc<Mutex<Option<CloseFrame>>> = Arc::default();
    let noted = failed.clone();
    let stream = stream.inspect(move |read| {
        if let Err(e) = read {
            *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(close_frame(e));
        }
    });
    let executor = PerConnection {
        schema,
        running: Arc::default(),
    };
    GraphQLWebSocket::new_with_pair(&mut sink, stream, executor, protocol)
        .on_connection_init(on_init)
        .serve()
        .await;
    let frame = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(frame) = frame {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// (size, limit) when a read failed on a message over the size limit.
pub fn too_long(e: &axum::Error) -> Option<(usize, usize)> {
    use tungstenite::error::{CapacityError, Error as WsError};
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>()) {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            Some((*size, *max_size))
        }
        _ => None,
    }
}

/// Why reading failed, as a close frame (1009 for a message too large).
fn close_frame(e: &axum::Error) -> CloseFrame {
    let (code, reason) = match too_long(e) {
        Some((size, max_size)) => (
            close_code::SIZE,
            format!("message of {size} bytes refused: at most {max_size} bytes"),
        ),
        None => (close_code::PROTOCOL, format!("cannot read the socket: {e}")),
    };
    // A close reason holds at most 123 bytes.
    let mut reason = reason;
    while reason.len() > 123 {
        reason.pop();
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The schema, counting one connection's running operations.
#[derive(Clone)]
struct PerConnection {
    schema: ApiSchema,
    running: Arc<AtomicUsize>,
}

impl Executor for PerConnection {
    async fn execute(&self, request: Request) -> Response {
        self.schema.execute(request).await
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let Ok(slot) = Slot::take(&self.running, MAX_SUBSCRIPTIONS_PER_CONNECTION) else {
            let refusal = error(
                Code::RateLimited,
                format!(
                    "this connection already runs {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions, the most allowed; complete one first"
                ),
            )
            .into_server_error(Default::default());
            return futures_util::stream::once(async { Response::from_errors(vec![refusal]) })
                .boxed();
        };
        // The slot goes when async-graphql drops the stream: it ended, the
        // client completed it, or the connection closed.
        self.schema
            .execute_stream_with_session_data(request, session_data.unwrap_or_default())
            .map(move |response| {
                let _held = &slot;
                response
            })
            .boxed()
    }
}

/// One of a bounded number of places, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Result<Self, usize> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })?;
        Ok(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per session, across the gateway.
#[derive(Default)]
pub struct SessionConnections {
    open: Mutex<HashMap<SessionId, usize>>,
}

/// A session's place among its connections; kept in the connection's data,
/// so it goes when the connection does.
pub struct ConnectionSlot {
    sessions: Arc<SessionConnections>,
    session: SessionId,
}

impl SessionConnections {
    /// A place for one more connection of `session`, or why not.
    pub fn open(
        self: &Arc<Self>,
        session: SessionId,
    ) -> Result<ConnectionSlot, async_graphql::Error> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(session).or_default();
        if *n >= MAX_CONNECTIONS_PER_SESSION {
            return Err(error(
                Code::RateLimited,
                format!(
                    "this session already has {MAX_CONNECTIONS_PER_SESSION} WebSocket connections open; close one first"
                ),
            ));
        }
        *n += 1;
        Ok(ConnectionSlot {
            sessions: self.clone(),
            session,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.sessions.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_session_gets_its_places_back_as_connections_close() {
        let sessions = Arc::new(SessionConnections::default());
        let sid = SessionId(Uuid::now_v7());
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_SESSION)
            .map(|_| sessions.open(sid).unwrap())
            .collect();
        assert!(sessions.open(sid).is_err());
        assert!(
            sessions.open(SessionId(Uuid::now_v7())).is_ok(),
            "per session"
        );
        drop(held);
        assert!(
            sessions.open.lock().unwrap().is_empty(),
            "no entry left behind"
        );
        assert!(sessions.open(sid).is_ok());
    }
}
