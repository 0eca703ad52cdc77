-- Chunks of uploads in progress: staging, not a record. A chunk sent again
-- replaces the first, so clients may retry; an upload's chunks are deleted
-- when it finishes or expires. A rowid table: rows this large belong out
-- of the primary key's b-tree.
CREATE TABLE upload_chunks (
    upload_id  BLOB    NOT NULL,
    idx        INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    UNIQUE (upload_id, idx)
);
