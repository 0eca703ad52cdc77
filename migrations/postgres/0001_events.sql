-- Events, in the schema named by the store URL (search_path).
--
-- Global order is (tx_id, seq): the writing transaction's id, then a
-- sequence within it. Readers only take rows whose tx_id is below the
-- oldest transaction still running (pg_snapshot_xmin), so a row can never
-- appear later behind a reader's checkpoint: a plain sequence alone would
-- let a later number commit before an earlier one and be skipped forever.
CREATE TABLE events (
    tx_id           bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    data            json        NOT NULL,
    actor           text,
    correlation_id  uuid,
    causation_id    uuid,
    source          text,
    PRIMARY KEY (tx_id, seq),
    UNIQUE (event_id),
    UNIQUE (stream_id, version)
);

-- Content-addressed blobs (dataset contents): sha256 -> bytes.
CREATE TABLE blobs (
    hash  bytea PRIMARY KEY,
    data  bytea NOT NULL
);

-- One append in one round trip and one short transaction.
--
-- p_expected: -1 any, -2 no stream, -3 stream exists, n >= 0 exact version.
-- Raises TB001 (wrong expected version; DETAIL is the actual version or
-- 'none') and TB002 (some ids already stored, but not as this same batch).
CREATE FUNCTION tb_append(
    p_stream       text,
    p_expected     bigint,
    p_ids          uuid[],
    p_types        text[],
    p_schemas      integer[],
    p_data         text[],
    p_actors       text[],
    p_correlations uuid[],
    p_causations   uuid[],
    p_sources      text[],
    OUT o_tx       bigint,
    OUT o_seq      bigint,
    OUT o_version  bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_n       integer := cardinality(p_ids);
    v_stream  text;
    v_first   bigint;
    v_matched integer;
    v_actual  bigint;
BEGIN
    -- The stream's lock comes first, before this transaction has an id
    -- (the advisory lock does not assign one; the INSERT below does), so
    -- within a stream tx_id order is version order.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream, 0));

    -- The same batch again: return the first append's result.
    SELECT e.stream_id, e.version INTO v_stream, v_first FROM events e WHERE e.event_id = p_ids[1];
    IF FOUND THEN
        SELECT count(*) INTO v_matched
          FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
          JOIN events e ON e.event_id = u.id
         WHERE e.stream_id = p_stream AND e.version = v_first + u.ord - 1;
        IF v_stream <> p_stream OR v_matched <> v_n THEN
            RAISE EXCEPTION 'event % was already appended, but not as this same batch', p_ids[1]
                USING ERRCODE = 'TB002',
                      DETAIL = CASE WHEN v_stream <> p_stream
                                    THEN 'it is in stream ' || v_stream
                                    ELSE 'the stored events do not match this batch' END;
        END IF;
        SELECT e.tx_id, e.seq, e.version INTO o_tx, o_seq, o_version
          FROM events e WHERE e.event_id = p_ids[v_n];
        RETURN;
    END IF;

    SELECT max(e.version) INTO v_actual FROM events e WHERE e.stream_id = p_stream;
    IF NOT (p_expected = -1
            OR (p_expected = -2 AND v_actual IS NULL)
            OR (p_expected = -3 AND v_actual IS NOT NULL)
            OR (v_actual IS NOT NULL AND p_expected = v_actual)) THEN
        RAISE EXCEPTION 'wrong expected version for stream %', p_stream
            USING ERRCODE = 'TB001', DETAIL = coalesce(v_actual::text, 'none');
    END IF;

    v_first := coalesce(v_actual + 1, 0);
    WITH inserted AS (
        INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,
                            actor, correlation_id, causation_id, source)
        SELECT u.id, p_stream, v_first + u.ord - 1, u.ty, u.sv, u.d::json, u.a, u.c, u.k, u.s
          FROM unnest(p_ids, p_types, p_schemas, p_data, p_actors, p_correlations, p_causations, p_sources)
               WITH ORDINALITY AS u(id, ty, sv, d, a, c, k, s, ord)
         ORDER BY u.ord
        RETURNING seq
    )
    SELECT max(seq) INTO o_seq FROM inserted;
    o_tx := pg_current_xact_id()::text::bigint;
    o_version := v_first + v_n - 1;
END
$$;

-- One page of the global order: up to p_limit matching events after
-- (p_tx, p_seq), below the horizon. Every row carries the horizon and
-- whether committed rows wait above it; with no matching event, one row
-- carries them with NULL event columns.
--
-- STABLE, so the horizon and the rows come from the caller's one snapshot.
-- The planner settings pin the plan to the (tx_id, seq) index: on a table
-- without statistics yet (every new deployment, for a minute) the planner
-- otherwise sorts the whole table to return one page.
CREATE FUNCTION tb_read_all(p_tx bigint, p_seq bigint, p_prefixes text[], p_types text[], p_limit integer)
RETURNS TABLE (
    horizon bigint, pending boolean,
    tx_id bigint, seq bigint, event_id uuid, stream_id text, version bigint, event_type text,
    schema_version integer, recorded_at timestamptz, data text,
    actor text, correlation_id uuid, causation_id uuid, source text)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
    v_horizon bigint := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    v_pending boolean := coalesce((SELECT max(e.tx_id) FROM events e) >= v_horizon, false);
BEGIN
    RETURN QUERY
        SELECT v_horizon, v_pending, e.tx_id, e.seq, e.event_id, e.stream_id, e.version, e.event_type,
               e.schema_version, e.recorded_at, e.data::text, e.actor, e.correlation_id, e.causation_id, e.source
          FROM events e
         WHERE e.tx_id >= p_tx AND (e.tx_id, e.seq) > (p_tx, p_seq) AND e.tx_id < v_horizon
           AND (p_prefixes IS NULL OR e.stream_id LIKE ANY (p_prefixes))
           AND (p_types IS NULL OR e.event_type = ANY (p_types))
         ORDER BY e.tx_id, e.seq
         LIMIT p_limit;
    IF NOT FOUND THEN
        RETURN QUERY SELECT v_horizon, v_pending, NULL::bigint, NULL::bigint, NULL::uuid, NULL::text,
                            NULL::bigint, NULL::text, NULL::integer, NULL::timestamptz, NULL::text,
                            NULL::text, NULL::uuid, NULL::uuid, NULL::text;
    END IF;
END
$$;

-- The last event's position, and the horizon, without depending on statistics.
CREATE FUNCTION tb_head(OUT horizon bigint, OUT last_tx bigint, OUT last_seq bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    horizon := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    SELECT max(e.tx_id) INTO last_tx FROM events e;
    SELECT max(e.seq) INTO last_seq FROM events e WHERE e.tx_id = last_tx;
END
$$;
