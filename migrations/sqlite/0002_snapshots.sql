-- Aggregate snapshots: a decider's state saved at a stream version, so a
-- command on a long stream reads only the events after it. A cache, not a
-- record: deleting any or all rows loses nothing but time.
CREATE TABLE snapshots (
    stream_id  TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL, -- the decider and its state version, e.g. licence/1
    version    INTEGER NOT NULL, -- the last stream version folded in
    data       TEXT    NOT NULL  -- the state, as JSON
) WITHOUT ROWID;
