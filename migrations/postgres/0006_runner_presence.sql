-- When each runner was last heard from, and which connection heard it:
-- liveness, not a record (heartbeats are not events). The gateway holding
-- a runner's connection refreshes its row; any gateway marks a runner whose
-- row fell silent offline, through the runner's stream, so a runner whose
-- gateway died is not online for ever. Not a view: views are rebuilt from
-- events, and none of this is in the log. Logged (a few small writes a
-- second): after a crash, rows still say when runners were last heard.
CREATE TABLE runner_presence (
    runner   uuid    NOT NULL PRIMARY KEY,
    holder   uuid    NOT NULL,
    seen_at  bigint  NOT NULL,
    busy     bigint  NOT NULL
);
