#!/usr/bin/env bash
# Raw PostgreSQL baseline for `trafficbuster bench store`: what the server
# does with an event-shaped table and no TrafficBuster code in the way.
# One row per transaction with 1 and 8 clients, and one 100-row
# INSERT ... SELECT per transaction with 1 client.
# Usage: bench/pgbench-baseline.sh [SECONDS]   (uses DATABASE_URL if set)
set -euo pipefail
secs="${1:-10}"
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
dir="$(mktemp -d)"
trap 'psql "$url" -qc "DROP TABLE IF EXISTS tb_pgbench_events" >/dev/null; rm -rf "$dir"' EXIT

PGOPTIONS="-c client_min_messages=warning" psql "$url" -q <<'SQL'
DROP TABLE IF EXISTS tb_pgbench_events;
CREATE TABLE tb_pgbench_events (
    position   bigserial PRIMARY KEY,
    stream_id  text   NOT NULL,
    version    bigint NOT NULL,
    event_type text   NOT NULL,
    data       json   NOT NULL,
    UNIQUE (stream_id, version)
);
SQL
cat > "$dir/one.sql" <<'SQL'
INSERT INTO tb_pgbench_events (stream_id, version, event_type, data)
VALUES ('s-' || :client_id || '-' || (random() * 1e9)::bigint, 0, 'BenchAppended',
        '{"n":1,"url":"https://example.test/page","dwell_ms":1234}');
SQL
cat > "$dir/batch.sql" <<'SQL'
INSERT INTO tb_pgbench_events (stream_id, version, event_type, data)
SELECT 'b-' || :client_id || '-' || r, g, 'BenchAppended', '{"n":1,"url":"https://example.test/page","dwell_ms":1234}'
  FROM (SELECT (random() * 1e12)::bigint AS r) x, generate_series(0, 99) g;
SQL
# Prints pgbench's transactions per second, or its whole output if it gave none.
tps_of() {
    local out
    out="$(pgbench -n "$@" "$url" 2>&1)" || true
    local tps
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")"
    if [ -z "$tps" ]; then
        echo "pgbench gave no figure:" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "$tps"
}

for clients in 1 8; do
    tps="$(tps_of -f "$dir/one.sql" -c "$clients" -j "$clients" -T "$secs")"
    printf 'pgbench one row per transaction, %d client(s): %8.0f tx/s\n' "$clients" "$tps"
done
tps="$(tps_of -f "$dir/batch.sql" -c 1 -j 1 -T "$secs")"
printf 'pgbench 100-row INSERT ... SELECT, 1 client:    %8.0f rows/s\n' "$(awk -v t="$tps" 'BEGIN { print t * 100 }')"
