//! The `Projection` trait: a view's name, its tables, and the pure function
//! that turns one event into the SQL writes it causes.
//!
//! Pure: `apply` does no I/O and never reads the view. Everything a view
//! holds is derived from events alone, so a batch is write-only and a
//! rebuilt view equals the live one.

use domain::RecordedEvent;
use store::Filter;

use crate::error::ProjectionError;
use crate::sql::Statement;

/// A read model written once for every backend.
pub trait Projection: Send + Sync + 'static {
    /// Stable name, also the checkpoint key, e.g. `"event_counts"`:
    /// lowercase letters, digits and underscores.
    fn name(&self) -> &'static str;

    /// Bump it when the schema or `apply` changes meaning: a view stored
    /// under an older version is dropped and rebuilt when the engine starts.
    fn version(&self) -> u32 {
        1
    }

    /// DDL creating the view's tables and indexes (portable SQL), run on an
    /// empty view: plain `CREATE TABLE`, no `IF NOT EXISTS` needed.
    fn schema(&self) -> &'static [&'static str];

    /// The view's tables, dropped on rebuild.
    fn tables(&self) -> &'static [&'static str];

    /// The events it needs; the default is all of them.
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Appends the writes `event` causes to `out`. Pure: no I/O.
    fn apply(&self, event: &RecordedEvent, out: &mut Vec<Statement>)
    -> Result<(), ProjectionError>;
}
