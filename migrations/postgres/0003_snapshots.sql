-- Aggregate snapshots: a decider's state saved at a stream version, so a
-- command on a long stream reads only the events after it. A cache, not a
-- record: deleting any or all rows loses nothing but time. UNLOGGED, so
-- saving one costs no WAL flush; a crash empties the table, which only
-- means the next commands fold their streams from the start once more.
CREATE UNLOGGED TABLE snapshots (
    stream_id  text   PRIMARY KEY,
    kind       text   NOT NULL, -- the decider and its state version, e.g. licence/1
    version    bigint NOT NULL, -- the last stream version folded in
    data       text   NOT NULL  -- the state, as JSON
);
