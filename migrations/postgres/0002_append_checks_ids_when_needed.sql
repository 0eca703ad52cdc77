-- tb_append, cheaper for the common case: the idempotency lookup runs only
-- when it can matter. An exact or no-stream expectation that holds cannot
-- be a repeat of an earlier append (that append would have moved the
-- stream), so only a failed check, or an expectation that cannot notice a
-- repeat (any, stream exists), looks the first event id up. A repeated id
-- that slips through still hits the unique index and is refused.
CREATE OR REPLACE FUNCTION tb_append(
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
    v_holds   boolean;
BEGIN
    -- The stream's lock first, before this transaction has an id: within a
    -- stream, tx_id order is version order.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream, 0));

    SELECT max(e.version) INTO v_actual FROM events e WHERE e.stream_id = p_stream;
    v_holds := p_expected = -1
            OR (p_expected = -2 AND v_actual IS NULL)
            OR (p_expected = -3 AND v_actual IS NOT NULL)
            OR (v_actual IS NOT NULL AND p_expected = v_actual);

    IF NOT v_holds OR p_expected IN (-1, -3) THEN
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
    END IF;

    IF NOT v_holds THEN
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
