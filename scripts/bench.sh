#!/usr/bin/env bash
# Benchmark: backstop against the tools an operator would otherwise cron, on a generated
# database of about 1 GB (pgbench, SCALE=68 by default), in a throwaway local cluster.
#
# Baselines it names and divides by:
#   backup:  pg_dump -Fc -Z0 > /dev/null              (the floor: reading the data out)
#   restore: pg_restore -j2 from a local, unencrypted dump file
# also shown: the shell pipeline pg_dump -Fc -Z0 | zstd -3 | age -r KEY > FILE, and a
# single-job pg_restore. Each case runs RUNS times (default 3); the median time is printed
# with the peak RSS (GNU time's %M, largest process of the case). Targets that later work is
# held to: backup <= 1.1x pg_dump, restore <= 1.0x pg_restore -j2, backstop peak RSS <= 128 MiB.
# The documents case backs up a generated tree of 2,000 files / ~500 MB (a directory source),
# then again after 1% of the files changed, next to `restic backup` of the same tree when restic
# is installed (apt-get install restic).
# The metadata cases, prune and report (scripts/bench-metadata.sh), run last;
# `CASES=metadata` runs them alone.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${CASES:-all}" in metadata | prune | report) exec bash scripts/bench-metadata.sh ;; esac
. scripts/deps.sh
ensure_deps age zstd jq runuser time curl
ensure_moto
. scripts/pg.sh

SCALE=${SCALE:-68}
RUNS=${RUNS:-3}
cargo build --release --quiet
BIN=$PWD/target/release/backstop
WORK=$(mktemp -d /var/tmp/backstop-bench.XXXXXX)
chmod 755 "$WORK"
MOTO_PID=
cleanup() {
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null
  pg_stop "$WORK/pg"; rm -rf "$WORK"
}
trap cleanup EXIT

PASSWORD=bench-$RANDOM
PG_EXTRA_OPTS="-c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min"
pg_start "$WORK/pg" "$PASSWORD"
export PGPASSWORD=$PASSWORD PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres
echo "generating the database (pgbench scale $SCALE) ..." >&2
psql -X -q -c "create database bench"
"$PG_BIN/pgbench" -i -q -s "$SCALE" bench >/dev/null 2>&1
SIZE=$(psql -X -At -d bench -c "select pg_size_pretty(pg_database_size('bench'))")
DB_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/bench"
"$BIN" keygen --out "$WORK/key.txt" > "$WORK/recipient"
RECIPIENT=$(cat "$WORK/recipient")
"$PG_BIN/pg_dump" -Fc -Z0 -d bench > /dev/null   # warm the cache

cat > "$WORK/policy.toml" <<POLICY
name = "bench"
[database]
url = "\${BENCH_DB_URL}"
[repository]
url = "\${BENCH_REPO}"
[encryption]
recipients = ["$RECIPIENT"]
POLICY
export BENCH_DB_URL=$DB_URL

declare -A TIME RSS
# measure NAME COMMAND...: runs RUNS times, keeps the median time and the largest peak RSS.
# A PREP function, when set, runs untimed before each run.
measure() {
  local name=$1; shift
  local times=() rss=0 i
  for ((i = 0; i < RUNS; i++)); do
    if [ -n "${PREP:-}" ]; then $PREP; fi
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null
    read -r t m < "$WORK/time"
    times+=("$t"); (( m > rss )) && rss=$m
  done
  TIME[$name]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$name]=$((rss / 1024))
  echo "  $name: ${TIME[$name]}s (runs: ${times[*]}), peak RSS ${RSS[$name]} MiB" >&2
}

fresh_repo() {
  rm -rf "$WORK/repo"; export BENCH_REPO=$WORK/repo
  "$BIN" init --policy "$WORK/policy.toml" 2>/dev/null
}
fresh_target() {
  psql -X -q -c "drop database if exists target with (force)" 2>/dev/null
  psql -X -q -c "create database target"
}

echo "backup cases ..." >&2
PREP= measure pg_dump "$PG_BIN/pg_dump" -Fc -Z0 -d bench
PREP= measure pipeline bash -c "'$PG_BIN/pg_dump' -Fc -Z0 -d bench | zstd -3 -q | age -r $RECIPIENT > '$WORK/pipeline.age'"
PREP=fresh_repo measure backstop_backup "$BIN" backup --policy "$WORK/policy.toml"
PREP= measure backstop_backup_again "$BIN" backup --policy "$WORK/policy.toml"

echo "restore cases ..." >&2
"$PG_BIN/pg_dump" -Fc -Z0 -d bench -f "$WORK/bench.dump"
PREP=fresh_target measure pg_restore_j2 "$PG_BIN/pg_restore" -j2 -d target "$WORK/bench.dump"
PREP=fresh_target measure pg_restore_j1 "$PG_BIN/pg_restore" -d target "$WORK/bench.dump"
PREP=fresh_target measure backstop_restore "$BIN" restore --policy "$WORK/policy.toml" \
  --identity "$WORK/key.txt" --db-url "postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/target"

echo "verify ..." >&2
PREP= measure backstop_verify "$BIN" verify --policy "$WORK/policy.toml" --identity "$WORK/key.txt" \
  --scratch-url "postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/postgres"

echo "S3 cases (moto server on loopback) ..." >&2
MOTO_PORT=$(free_port)
"$BACKSTOP_MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$MOTO_PORT) 2>/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret BENCH_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT
sed -e 's|^url = "\${BENCH_REPO}"|url = "s3://bench/repo"\nendpoint = "${BENCH_S3_ENDPOINT}"\nregion = "us-east-1"|' \
  "$WORK/policy.toml" > "$WORK/policy-s3.toml"
BUCKET_N=0
fresh_bucket() {
  BUCKET_N=$((BUCKET_N + 1))
  curl -s -X PUT "$BENCH_S3_ENDPOINT/bench$BUCKET_N" >/dev/null
  sed -i "s|s3://bench[0-9]*/repo|s3://bench$BUCKET_N/repo|" "$WORK/policy-s3.toml"
  "$BIN" init --policy "$WORK/policy-s3.toml" 2>/dev/null
}
PREP=fresh_bucket measure s3_backup "$BIN" backup --policy "$WORK/policy-s3.toml"
PREP=fresh_target measure s3_restore "$BIN" restore --policy "$WORK/policy-s3.toml" \
  --identity "$WORK/key.txt" --db-url "postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/target"

echo "documents cases ..." >&2
python3 - "$WORK/docs/documents" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(2000):
    d = os.path.join(root, f"dir{i % 40:02d}")
    os.makedirs(d, exist_ok=True)
    size = 3_000_000 if i % 20 == 0 else 100_000   # 100 x 3 MB + 1900 x 100 kB = ~490 MB
    with open(os.path.join(d, f"file-{i:04d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
DOCS_BYTES=$(du -sb "$WORK/docs" | cut -f1)
cat > "$WORK/policy-docs.toml" <<POLICY
name = "docs"
[storage]
kind = "dir"
path = "$WORK/docs"
buckets = ["documents"]
[repository]
url = "$WORK/docrepo"
[encryption]
recipients = ["$RECIPIENT"]
POLICY
export BACKSTOP_CACHE_DIR=$WORK/cache
change_1pct() {
  python3 - "$WORK/docs/documents" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(1, 2000, 100):       # 20 files of 2,000, never the same twice
    p = os.path.join(root, f"dir{i % 40:02d}", f"file-{i:04d}.bin")
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
PY
}
fresh_docrepo() { rm -rf "$WORK/docrepo" "$WORK/cache"; "$BIN" init --policy "$WORK/policy-docs.toml" 2>/dev/null; }
docs_then_change() { fresh_docrepo; "$BIN" backup --policy "$WORK/policy-docs.toml" 2>/dev/null; change_1pct; }
PREP=fresh_docrepo measure docs_first "$BIN" backup --policy "$WORK/policy-docs.toml"
PREP=docs_then_change measure docs_second "$BIN" backup --policy "$WORK/policy-docs.toml"
if command -v restic >/dev/null 2>&1; then
  export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic
  fresh_restic() { rm -rf "$WORK/restic"; restic init -q >/dev/null; }
  restic_then_change() { fresh_restic; restic backup -q "$WORK/docs" >/dev/null; change_1pct; }
  PREP=fresh_restic measure restic_first restic backup -q "$WORK/docs"
  PREP=restic_then_change measure restic_second restic backup -q "$WORK/docs"
fi

DUMP_BYTES=$(stat -c %s "$WORK/bench.dump")
STORED=$(du -sb "$WORK/repo/blobs" | cut -f1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo
echo "database: $SIZE (pgbench scale $SCALE); dump $((DUMP_BYTES / 1048576)) MiB; repository blobs $((STORED / 1048576)) MiB; runs: $RUNS; cores: $(nproc)"
printf '%-44s %9s %8s %14s\n' case "time_s" ratio "peak_rss_MiB"
row() { printf '%-44s %9s %8s %14s\n' "$1" "${TIME[$2]}" "$(ratio "${TIME[$2]}" "${TIME[$3]}")x" "${RSS[$2]}"; }
row "pg_dump -Fc -Z0 > /dev/null (baseline)" pg_dump pg_dump
row "pg_dump | zstd -3 | age > file" pipeline pg_dump
row "backstop backup (new repository)" backstop_backup pg_dump
row "backstop backup (unchanged, deduplicated)" backstop_backup_again pg_dump
row "pg_restore -j2 local dump (baseline)" pg_restore_j2 pg_restore_j2
row "pg_restore -j1 local dump" pg_restore_j1 pg_restore_j2
row "backstop restore" backstop_restore pg_restore_j2
row "backstop verify (restore + compare; vs backstop restore)" backstop_verify backstop_restore
row "backstop backup to S3 (moto, new bucket)" s3_backup pg_dump
row "backstop restore from S3 (moto)" s3_restore pg_restore_j2
echo
echo "documents: 2,000 files, $((DOCS_BYTES / 1048576)) MiB (incompressible); ratios against restic when installed"
if command -v restic >/dev/null 2>&1; then
  row "restic backup, first (baseline)" restic_first restic_first
  row "restic backup, 1% changed" restic_second restic_first
  row "backstop backup --only storage, first" docs_first restic_first
  row "backstop backup --only storage, 1% changed" docs_second restic_second
else
  echo "(restic not installed: apt-get install restic, then run again for the comparison)"
  row "backstop backup --only storage, first" docs_first docs_first
  row "backstop backup --only storage, 1% changed" docs_second docs_first
fi

echo
bash scripts/bench-metadata.sh
