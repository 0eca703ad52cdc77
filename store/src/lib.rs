//! The event store: the `EventStore` trait and its backends, embedded SQLite
//! (the default) and PostgreSQL, with one set of guarantees checked by one
//! conformance suite (`tests/conformance.rs`).

pub mod error;
pub mod event_store;
pub mod identifier;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
pub mod url;

use std::sync::Arc;

pub use error::StoreError;
pub use event_store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Filter, Head, MAX_EVENT_DATA_BYTES, Page,
    Presence, Snapshot, StreamFrom, SubscribeFrom,
};
pub use identifier::valid_identifier;
pub use migrate::MigrationReport;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use subscription::Subscription;
pub use url::StoreUrl;

/// An opened store with its concrete backend, for read models kept in the
/// same database as the events.
#[derive(Clone)]
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Backend {
    /// The same store, type-erased.
    pub fn event_store(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }
}

/// Opens the store at `url`, applying any pending migrations.
pub async fn open(url: &StoreUrl) -> Result<(Arc<dyn EventStore>, MigrationReport), StoreError> {
    let (backend, report) = open_backend(url).await?;
    Ok((backend.event_store(), report))
}

/// Like [`open`], keeping the concrete backend.
pub async fn open_backend(url: &StoreUrl) -> Result<(Backend, MigrationReport), StoreError> {
    match url {
        StoreUrl::Sqlite(path) => {
            let (store, report) = SqliteStore::open(path).await?;
            Ok((Backend::Sqlite(store), report))
        }
        StoreUrl::Postgres { config, schema, .. } => {
            let (store, report) = PostgresStore::open((**config).clone(), schema).await?;
            Ok((Backend::Postgres(store), report))
        }
    }
}
