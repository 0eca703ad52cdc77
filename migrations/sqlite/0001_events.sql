-- Events: one row each. `position` is the global order; SQLite has one writer
-- at a time, so row order is commit order.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    data            TEXT    NOT NULL,
    actor           TEXT,
    correlation_id  BLOB,
    causation_id    BLOB,
    source          TEXT,
    UNIQUE (stream_id, version)
);

-- Content-addressed blobs (dataset contents): sha256 -> bytes.
CREATE TABLE blobs (
    hash  BLOB PRIMARY KEY,
    data  BLOB NOT NULL
) WITHOUT ROWID;
