-- Chunks of uploads in progress: staging, not a record. A chunk sent again
-- replaces the first, so clients may retry; an upload's chunks are deleted
-- when it finishes or expires. UNLOGGED, so 64 MiB of chunks cost no WAL:
-- a crash (or a failover) empties the table, and a client asking
-- `upload(id)` is told which chunks to send again.
CREATE UNLOGGED TABLE upload_chunks (
    upload_id  uuid    NOT NULL,
    idx        bigint  NOT NULL,
    data       bytea   NOT NULL,
    PRIMARY KEY (upload_id, idx)
);
