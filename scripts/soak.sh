#!/usr/bin/env bash
# Soak of the daemon's memory (not part of CI): a throwaway PostgreSQL with the sample
# database, a documents folder, three policies in one local repository with jobs due every
# few seconds (backups of the database and the documents, a prune, a verify), run by the
# release binary's daemon for DURATION seconds (default 1200). Every SAMPLE seconds (default
# 15) it prints the daemon's RSS and the number of runs recorded so far, then the mean RSS of
# the first and last quarters after a warm-up of WARMUP seconds (default 120) and their
# ratio. A flat daemon keeps the ratio near 1.0.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps jq runuser
. scripts/pg.sh

DURATION=${DURATION:-1200}
SAMPLE=${SAMPLE:-15}
WARMUP=${WARMUP:-120}
cargo build --release --quiet
BIN=$PWD/target/release/backstop
WORK=$(mktemp -d /tmp/backstop-soak.XXXXXX)
chmod 755 "$WORK"
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  pg_stop "$WORK/pg"
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PASSWORD=soak-$RANDOM-pw
pg_start "$WORK/pg" "$PASSWORD"
export PGPASSWORD=$PASSWORD
psql() { command psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "create database shop"
psql -d shop -f tests/fixtures/supabase.sql >/dev/null
export SOAK_DB_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/shop"
export SOAK_SCRATCH_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/postgres"
mkdir -p "$WORK/docs/documents/menus"
for i in $(seq 1 200); do printf 'menu %s\n' "$i" >"$WORK/docs/documents/menus/$i.txt"; done
head -c 2000000 /dev/urandom >"$WORK/docs/documents/scan.bin"

"$BIN" keygen --out "$WORK/key.txt" >"$WORK/recipient"
export BACKSTOP_IDENTITY=$WORK/key.txt
mkdir -p "$WORK/policies"
policy() { # name, extra sections
  cat >"$WORK/policies/$1.toml" <<EOF
name = "$1"
[objectives]
rpo = "1h"
rto = "1h"
retention = "1d"
[repository]
url = "$WORK/repo"
[encryption]
recipients = ["$(cat "$WORK/recipient")"]
$2
EOF
}
policy db "[database]
url = \"\${SOAK_DB_URL}\"
[schedule]
backup = \"*/10 * * * * *\"
verify = \"*/45 * * * * *\"
[verify]
scratch_url = \"\${SOAK_SCRATCH_URL}\"
read_data = \"all\""
policy docs "[storage]
kind = \"dir\"
path = \"$WORK/docs\"
buckets = [\"documents\"]
[schedule]
backup = \"*/7 * * * * *\"
prune = \"*/30 * * * * *\"
[retention]
keep_last = 5"
policy both "[database]
url = \"\${SOAK_DB_URL}\"
[storage]
kind = \"dir\"
path = \"$WORK/docs\"
buckets = [\"documents\"]
[schedule]
backup = \"*/13 * * * * *\""
"$BIN" init --policy "$WORK/policies/db.toml" >/dev/null

"$BIN" daemon --policies "$WORK/policies" --listen 127.0.0.1:0 >/dev/null 2>"$WORK/daemon.log" &
DAEMON=$!
start=$(date +%s)
printf '%8s %10s %6s\n' seconds rss_kib runs | tee "$WORK/samples"
while :; do
  now=$(( $(date +%s) - start ))
  [ "$now" -gt "$DURATION" ] && break
  if ! rss=$(awk '/VmRSS/ {print $2}' "/proc/$DAEMON/status" 2>/dev/null); then
    echo "the daemon exited:"; tail -n 20 "$WORK/daemon.log"; exit 1
  fi
  runs=$( (find "$WORK/repo/runs" -name '*.json' 2>/dev/null || true) | wc -l)
  printf '%8s %10s %6s\n' "$now" "$rss" "$runs" | tee -a "$WORK/samples"
  sleep "$SAMPLE"
done
failed=$( (grep -l '"ok": false' "$WORK"/repo/runs/*/*.json 2>/dev/null || true) | wc -l)
echo "runs that failed: $failed (see $WORK/daemon.log with KEEP=1)"
awk -v w="$WARMUP" 'BEGIN { n = 0 } NR > 1 && $1 >= w { t[n] = $1; r[n] = $2; n++ }
  END {
    q = int(n / 4); if (q < 1) { print "too short to compare"; exit }
    for (i = 0; i < q; i++) { a += r[i]; b += r[n - 1 - i] }
    printf "RSS after warm-up: first quarter mean %.1f MiB, last quarter mean %.1f MiB, ratio %.3f\n",
      a / q / 1024, b / q / 1024, b / a
  }' "$WORK/samples"
