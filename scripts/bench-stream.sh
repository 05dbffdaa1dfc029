#!/usr/bin/env bash
# Benchmark of continuous protection (`CASES=stream bash scripts/bench.sh`, or run directly):
# a throwaway cluster with wal_level = logical, pgbench initialised at SCALE (default 10), a
# base backup, then `backstop stream` (seal_every SEAL, default 10s) while pgbench runs
# unthrottled for DURATION seconds (default 60) with CLIENTS (default 4) clients: the highest rate this
# machine sustains with the stream beside it; RATE=TPS throttles it instead (pgbench -R), for an
# application's rate rather than the machine's limit. It prints:
#   - the workload's rate (tps) and the WAL it wrote;
#   - the stream's lag, sampled every second as now minus the newest sealed commit (median and
#     worst), and the WAL the slot held (worst), against seal_every;
#   - the stream's peak RSS;
#   - the replay: a restore --before now of the whole run, its "stream" phase against the
#     workload's duration (the target: under 10%, i.e. one hour replayed in under 6 minutes);
#   - the repository's growth: the segments' plaintext and stored bytes.
# Needs only PostgreSQL's binaries (pgbench included), the backstop binary and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps jq runuser
. scripts/pg.sh

SCALE=${SCALE:-10}
SECONDS_RUN=${DURATION:-60}
CLIENTS=${CLIENTS:-4}
RATE=${RATE:-}
SEAL=${SEAL:-10s}
cargo build --release --quiet
BIN=$PWD/target/release/backstop
WORK=$(mktemp -d /var/tmp/backstop-bench-stream.XXXXXX)
chmod 755 "$WORK"
STREAM_PID=
cleanup() { [ -n "$STREAM_PID" ] && kill "$STREAM_PID" 2>/dev/null; pg_stop "$WORK/pg"; rm -rf "$WORK"; }
trap cleanup EXIT

PASSWORD=bench-$RANDOM
PG_EXTRA_OPTS="-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 -c shared_buffers=256MB -c max_wal_size=4GB"
pg_start "$WORK/pg" "$PASSWORD"
export PGPASSWORD=$PASSWORD PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres
psql -X -q -c "create database bench"
"$PG_BIN/pgbench" -i -q -s "$SCALE" bench >/dev/null 2>&1
export BENCH_DB_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/bench"
"$BIN" keygen --out "$WORK/key.txt" >"$WORK/recipient" 2>/dev/null
cat >"$WORK/bench.toml" <<EOF
name = "bench"
[database]
url = "\${BENCH_DB_URL}"
[stream]
slot = "backstop_bench"
publication = "backstop_bench"
seal_every = "$SEAL"
max_slot_lag = "8GiB"
drop_slot_at = "64GiB"
[repository]
url = "$WORK/repo"
[encryption]
recipients = ["$(cat "$WORK/recipient")"]
EOF
export BACKSTOP_CACHE_DIR=$WORK/cache
"$BIN" init --policy "$WORK/bench.toml" >/dev/null 2>&1
"$BIN" stream --setup --policy "$WORK/bench.toml" >/dev/null 2>&1
"$BIN" backup --policy "$WORK/bench.toml" >/dev/null 2>&1
"$BIN" stream --policy "$WORK/bench.toml" 2>"$WORK/stream.log" &
STREAM_PID=$!
sleep 2

wal0=$(psql -X -At -d bench -c "select pg_current_wal_lsn()")
start=$(date +%s.%N)
"$PG_BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" ${RATE:+-R "$RATE"} bench >"$WORK/pgbench.out" 2>&1 &
PGBENCH=$!
: >"$WORK/lag"
while kill -0 "$PGBENCH" 2>/dev/null; do
  psql -X -At -d bench -c "select coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 \
    from pg_replication_slots where slot_name = 'backstop_bench'" >>"$WORK/held" || true
  last=$( (cat "$WORK"/repo/streams/bench/*.json 2>/dev/null || true) | jq -r .last_commit_at | sort | tail -n 1)
  if [ -n "$last" ]; then
    python3 -c "import sys, datetime as d; t = d.datetime.fromisoformat(sys.argv[1].replace('Z', '+00:00')); print((d.datetime.now(d.timezone.utc) - t).total_seconds())" "$last" >>"$WORK/lag"
  fi
  sleep 1
done
wait "$PGBENCH" || true
end=$(date +%s.%N)
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.out" | head -n 1)
wal=$(psql -X -At -d bench -c "select pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0'))")
# Let the stream seal the rest, then stop it.
want=$(psql -X -At -d bench -c "select pg_current_wal_insert_lsn()")
for _ in $(seq 1 600); do
  [ "$(psql -X -At -d bench -c "select confirmed_flush_lsn >= '$want' from pg_replication_slots where slot_name = 'backstop_bench'")" = t ] && break
  sleep 0.5
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$STREAM_PID/status")
kill -TERM "$STREAM_PID"; wait "$STREAM_PID" || true; STREAM_PID=
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
worst() { sort -n | tail -n 1; }
held_worst=$(sort -n "$WORK/held" | tail -n 1)

psql -X -q -c "create database restored"
t0=$(date +%s.%N)
"$BIN" restore --policy "$WORK/bench.toml" --identity "$WORK/key.txt" --before now \
  --db-url "postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/restored" --json >"$WORK/restore.json" 2>"$WORK/restore.err" \
  || { cat "$WORK/restore.err"; exit 1; }
t1=$(date +%s.%N)
replay=$(jq -r '[.phases[] | select(.name == "stream") | .duration_s] | add // 0' "$WORK/restore.json")
txns=$(jq -r .stream.transactions "$WORK/restore.json")
same=$(for db in bench restored; do
  psql -X -At -d "$db" -c "select md5(string_agg(x::text, ',' order by aid)) from pgbench_accounts x"
done | uniq | wc -l)
plain=$(cat "$WORK"/repo/streams/bench/*.json | jq -s '[.[].bytes_plain] | add')
stored=$(cat "$WORK"/repo/streams/bench/*.json | jq -s '[.[].blobs[].size] | add')
segments=$(ls "$WORK"/repo/streams/bench/*.json | wc -l)
duration=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')

echo
echo "| figure | value |"
echo "|---|---|"
echo "| workload | pgbench scale $SCALE, $CLIENTS clients, $(if [ -n "$RATE" ]; then echo "throttled to $RATE tps"; else echo unthrottled; fi), ${duration}s: $tps tps, $wal of WAL |"
echo "| stream lag (now - newest sealed commit), median / worst | $(median <"$WORK/lag")s / $(worst <"$WORK/lag")s (seal_every $SEAL) |"
echo "| WAL held by the slot, worst | $(awk -v b="$held_worst" 'BEGIN {printf "%.1f MiB", b / 1048576}') |"
echo "| stream peak RSS | $((rss / 1024)) MiB |"
echo "| segments sealed | $segments |"
echo "| replay of the run ($txns transactions) | ${replay}s, $(awk -v r="$replay" -v d="$duration" 'BEGIN {printf "%.1f%%", 100 * r / d}') of the workload's duration (target under 10%) |"
echo "| whole restore --before now | $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')s |"
echo "| restored pgbench_accounts equal to the source | $([ "$same" = 1 ] && echo yes || echo NO) |"
echo "| segments' plaintext / stored | $(awk -v p="$plain" -v s="$stored" 'BEGIN {printf "%.1f MiB / %.1f MiB (%.1fx)", p / 1048576, s / 1048576, (s > 0 ? p / s : 0)}') |"
