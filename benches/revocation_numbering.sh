#!/usr/bin/env bash
# Recording revocation events: the counter row held to commit (as before
# the migration `revocation_numbering`) against pending events numbered
# after commit by a separate numberer (as now), with pgbench on a scratch
# cluster holding every migration. Prints transactions per second for each
# variant and client count, and checks afterwards that the numberer kept up
# and that ids have no gaps.
#
#   bash benches/revocation_numbering.sh [seconds per cell] [rounds]
#
# Needs PostgreSQL's server binaries (initdb, pg_ctl, pgbench), as the tests
# do. Run as root it runs the cluster as `postgres`. DURABLE=1 keeps fsync
# and synchronous_commit on (the default is the load generator's cluster:
# both off).
set -euo pipefail

SECONDS_PER_CELL=${1:-5}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-"1 4 16 64"}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/authd-numbering.XXXXXX)
PORT=${PORT:-55499}
chmod 755 "$WORK"

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$WORK"

as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -A trust >/dev/null
SETTINGS="-c listen_addresses='' -c unix_socket_directories=$WORK -c port=$PORT -c max_connections=200"
if [ "${DURABLE:-0}" != 1 ]; then
    SETTINGS="$SETTINGS -c fsync=off -c synchronous_commit=off"
fi
as_pg "$BIN/pg_ctl" -D "$WORK/data" -o "$SETTINGS" -l "$WORK/log" -w start >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

psql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres "$@"; }
for m in "$ROOT"/migrations/*.sql; do psql -f "$m" >/dev/null; done

# The recording as it was: the counter's row locked from the event to commit.
psql <<'SQL' >/dev/null
CREATE FUNCTION bench_record_with_counter(p_user_id uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE event_id bigint;
BEGIN
    UPDATE revocation_log SET last_event_id = last_event_id + 1
     RETURNING last_event_id INTO event_id;
    INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at, txn)
    VALUES (event_id, 'SESSION_ENDED', p_user_id, ARRAY[gen_random_uuid()], clock_timestamp(),
            pg_current_xact_id()::text::bigint);
    PERFORM pg_notify('authd_revocation', event_id::text);
    RETURN event_id;
END $$;
SQL

cat >"$WORK/counter.sql" <<'SQL'
SELECT bench_record_with_counter(gen_random_uuid());
SQL
cat >"$WORK/pending.sql" <<'SQL'
SELECT authd_record_event('SESSION_ENDED', gen_random_uuid(), ARRAY[gen_random_uuid()], NULL);
SQL
# The numberer, as a replica's task runs it while events keep coming.
cat >"$WORK/number.sql" <<'SQL'
SELECT authd_number_events(1000);
\sleep 1 ms
SQL

bench() { # script clients -> tps
    as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
        -c "$2" -j 2 -T "$SECONDS_PER_CELL" -f "$WORK/$1" postgres 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p' | cut -d. -f1
}

echo "seconds per cell: $SECONDS_PER_CELL, durable: ${DURABLE:-0}"
printf '%8s  %-28s  %-28s\n' clients "counter row held to commit" "pending, numbered after"
for c in $CLIENTS; do
    counter=() pending=()
    for _ in $(seq "$ROUNDS"); do
        counter+=("$(bench counter.sql "$c")")
        # One numberer beside the writers, as one replica would run.
        as_pg "$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared -c 1 \
            -T "$((SECONDS_PER_CELL + 1))" -f "$WORK/number.sql" postgres >/dev/null 2>&1 &
        numberer=$!
        pending+=("$(bench pending.sql "$c")")
        wait "$numberer"
        psql -c "SELECT authd_number_events(1000000)" >/dev/null
    done
    printf '%8s  %-28s  %-28s\n' "$c" "$(IFS=/; echo "${counter[*]}")" "$(IFS=/; echo "${pending[*]}")"
done

psql -At -c "SELECT authd_number_events(1000000)" >/dev/null
psql -At <<'SQL'
SELECT format('left pending: %s; events: %s; ids %s..%s, gaps: %s; times fall with ids: %s',
    (SELECT count(*) FROM revocation_pending),
    count(*), min(id), max(id), max(id) - min(id) + 1 - count(*),
    (SELECT count(*) FROM (SELECT occurred_at < lag(occurred_at) OVER (ORDER BY id) AS fell
                             FROM revocation_events) t WHERE fell))
  FROM revocation_events;
SQL
