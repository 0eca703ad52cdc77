-- The head of the log is the reader's snapshot (horizon, next id, open
-- transactions), read inline by the store: tb_head's "last event" could sit
-- above a transaction still open below it, whose events then landed behind
-- a subscription started from that head.
DROP FUNCTION tb_head();
