-- When each runner was last heard from, and which connection heard it:
-- liveness, not a record (heartbeats are not events). The gateway holding
-- a runner's connection refreshes its row; any gateway marks a runner whose
-- row fell silent offline, through the runner's stream, so a runner whose
-- gateway died is not online for ever. Not a view: views are rebuilt from
-- events, and none of this is in the log.
CREATE TABLE runner_presence (
    runner   BLOB    NOT NULL PRIMARY KEY,
    holder   BLOB    NOT NULL,
    seen_at  INTEGER NOT NULL,
    busy     INTEGER NOT NULL
);
