//! Schema migrations, embedded from `migrations/` at build time and applied
//! in order, each once, by `trafficbuster migrate` and on every start.

/// A numbered SQL script.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_events",
        sql: include_str!("../../migrations/sqlite/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "0002_snapshots",
        sql: include_str!("../../migrations/sqlite/0002_snapshots.sql"),
    },
    Migration {
        version: 3,
        name: "0003_upload_chunks",
        sql: include_str!("../../migrations/sqlite/0003_upload_chunks.sql"),
    },
    Migration {
        version: 4,
        name: "0004_runner_presence",
        sql: include_str!("../../migrations/sqlite/0004_runner_presence.sql"),
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_events",
        sql: include_str!("../../migrations/postgres/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "0002_append_checks_ids_when_needed",
        sql: include_str!("../../migrations/postgres/0002_append_checks_ids_when_needed.sql"),
    },
    Migration {
        version: 3,
        name: "0003_snapshots",
        sql: include_str!("../../migrations/postgres/0003_snapshots.sql"),
    },
    Migration {
        version: 4,
        name: "0004_head_is_a_snapshot",
        sql: include_str!("../../migrations/postgres/0004_head_is_a_snapshot.sql"),
    },
    Migration {
        version: 5,
        name: "0005_upload_chunks",
        sql: include_str!("../../migrations/postgres/0005_upload_chunks.sql"),
    },
    Migration {
        version: 6,
        name: "0006_runner_presence",
        sql: include_str!("../../migrations/postgres/0006_runner_presence.sql"),
    },
];

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations this run applied, in order.
    pub applied: Vec<&'static str>,
    /// The schema version now in place.
    pub version: i64,
}
