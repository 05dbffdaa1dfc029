#!/usr/bin/env bash
# Benchmark: backstop against the tools an operator would otherwise use, in a throwaway local
# cluster, on data shaped like a real app.
#
# DATASET=app (default): scripts/bench-app.sql, a Supabase-shaped database of about 1 GB
#   (SCALE=1; auth, storage and public schemas, 25 tables of very different sizes, btree, gin
#   and partial indexes, foreign keys, text, jsonb, timestamptz, bytea a quarter random), and a
#   documents bucket of 1,500 files, about 400 MB, two thirds of the bytes incompressible.
# DATASET=pgbench: pgbench at SCALE (default 68), one big table that compresses 70:1.
#
# Each of ROUNDS rounds (default 3) runs every case once, in alternating order, and divides
# each case by its baseline measured in the same round:
#   backstop backup (new repository)      / pg_dump -Fc -Z0 -f FILE
#   backstop backup (new repository)      / pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY | tee >(sha256sum) > FILE
#   backstop backup (unchanged)           / pg_dump -Fc -Z0 -f FILE
#   backstop backup (unchanged, 400 snapshots in the repository) / the unchanged backup above
#     (a copy of the repository plus 398 synthetic daily snapshots, each naming the real
#     snapshot's blobs with every 20th replaced by one of its own, as 5% daily churn would;
#     one untimed backup first builds the host's blob index, as the daily runs before it would)
#   backstop restore (empty database)     / pg_restore -jJOBS from a local file
#   backstop backup of the documents      / restic backup       (apt-get install restic)
#   backstop restore of the documents     / restic restore
#   backstop backup into S3 (new bucket)  / the backup into a new local repository above
#   backstop restore from S3              / pg_restore -jJOBS from a local file
#     (S3 is the moto server on loopback, from PyPI like the tests': its Python shares the
#     machine's cores with everything else, which a real S3 endpoint would not)
# JOBS (default: the cores, at most 8) is both pg_restore's -j and the policies' [restore] jobs.
# CASES=restore runs only the restore cases (the backups they need are made untimed), and
# prints the most bytes of temporary files (spool or TOC) the restore held at any moment.
# Needs only PostgreSQL's binaries, Python 3 and the backstop binary (BIN=path, else built
# with cargo); zstd and age (the pipeline), restic and moto (from PyPI) are optional: their
# cases are skipped, with a note, when they cannot be had.
# It prints each round's times, peak RSS (the largest process's), the CPU-seconds the whole machine
# spent during each case (from /proc/stat: backstop's work and the PostgreSQL server's alike)
# and the ratios, then the medians of the ratios. Where a case and its baseline both keep every
# core busy, the ratio of their CPU-seconds is the ratio of their times no scheduling can beat. Targets (issue 15): backup <= 1.1x pg_dump and <= 1.0x the pipeline, unchanged
# backup <= 1.0x pg_dump, with 400 snapshots <= 1.1x the unchanged backup, restore <= 1.0x pg_restore -j2, documents <= 1.0x restic, peak RSS
# <= 128 MiB; (issue 28) restore <= 1.0x pg_restore -jJOBS in time and <= 1.05x in machine
# CPU-seconds, from S3 <= 1.3x, peak RSS <= 128 MiB, no spool. `CASES=metadata` runs the prune and report cases (scripts/bench-metadata.sh),
# `CASES=stream` the change stream against pgbench (scripts/bench-stream.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${CASES:-all}" in
  metadata | prune | report) exec bash scripts/bench-metadata.sh ;;
  stream) exec bash scripts/bench-stream.sh ;;
esac
. scripts/deps.sh
MODE=${CASES:-all}
# Optional tools: installed where the machine allows it, else their cases are skipped.
[ "$(id -u)" = 0 ] && (ensure_deps runuser) >/dev/null 2>&1
[ "$MODE" = all ] && { (ensure_deps age zstd restic) >/dev/null 2>&1 || true; }
(ensure_moto) >/dev/null 2>&1 && ensure_moto >/dev/null 2>&1 || true
have() { command -v "$1" >/dev/null 2>&1; }
SKIP=()
{ have age && have zstd; } || SKIP+=(pipeline)
have restic || SKIP+=(restic_backup restic_restore)
[ -x "${BACKSTOP_MOTO_SERVER:-}" ] || SKIP+=(s3_backup s3_restore)
((${#SKIP[@]})) && echo "note: skipping ${SKIP[*]} (age and zstd, restic or moto not available)" >&2
. scripts/pg.sh

DATASET=${DATASET:-app}
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-$(n=$(nproc); echo $((n > 8 ? 8 : n)))}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/backstop
fi
WORK=$(mktemp -d /var/tmp/backstop-bench.XXXXXX)
chmod 755 "$WORK"
MOTO_PID=
cleanup() { [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null; pg_stop "$WORK/pg"; rm -rf "$WORK"; }
SPOOL=$WORK/spool
mkdir -p "$SPOOL"
trap cleanup EXIT

PASSWORD=bench-$RANDOM
PG_EXTRA_OPTS="-c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min -c maintenance_work_mem=256MB"
pg_start "$WORK/pg" "$PASSWORD"
export PGPASSWORD=$PASSWORD PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres
psql -X -q -c "create database bench"
DOCS=1500
t0=$(date +%s)
if [ "$DATASET" = pgbench ]; then
  SCALE=${SCALE:-68}
  echo "generating the database (pgbench scale $SCALE) ..." >&2
  "$PG_BIN/pgbench" -i -q -s "$SCALE" bench >/dev/null 2>&1
else
  SCALE=${SCALE:-1}
  echo "generating the app-shaped database (scale $SCALE) ..." >&2
  psql -X -q -d bench -v scale="$SCALE" -v docs="$DOCS" -f scripts/bench-app.sql >/dev/null
fi
echo "  generated in $(( $(date +%s) - t0 ))s" >&2
SIZE=$(psql -X -At -d bench -c "select pg_size_pretty(pg_database_size('bench'))")
TABLES=$(psql -X -At -d bench -c "select count(*) from pg_stat_user_tables")
DB_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/bench"
"$BIN" keygen --out "$WORK/key.txt" > "$WORK/recipient" 2>/dev/null
RECIPIENT=$(cat "$WORK/recipient")

[ "$MODE" = restore ] && DOCS=0
echo "generating the documents ($DOCS files) ..." >&2
mkdir -p "$WORK/docs/documents"
python3 - "$WORK/docs/documents" "$DOCS" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
words = b"menu contract invoice kimchi bibimbap supplier delivery allergen price table total page ".split()
rng = random.Random(7)
for i in range(1, n + 1):
    d = os.path.join(root, f"dir{i % 40:02d}")
    os.makedirs(d, exist_ok=True)
    size = 2_400_000 if i % 25 == 0 else 230_000          # ~60 x 2.4 MB + 1440 x 230 kB = ~475 MB
    with open(os.path.join(d, f"doc-{i:05d}.bin"), "wb") as f:
        if i % 3 == 0:                                      # a third of the files: text-like
            f.write(b" ".join(rng.choice(words) for _ in range(size // 7))[:size])
        else:                                               # two thirds: scans, PDFs, images
            f.write(os.urandom(size))
PY
DOCS_BYTES=$(du -sb "$WORK/docs" | cut -f1)

cat > "$WORK/policy.toml" <<POLICY
name = "bench"
[database]
url = "\${BENCH_DB_URL}"
[repository]
url = "\${BENCH_REPO}"
[encryption]
recipients = ["$RECIPIENT"]
[restore]
jobs = $JOBS
spool_dir = "$SPOOL"
POLICY
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
MOTO_PORT=$(free_port)
if [ -x "${BACKSTOP_MOTO_SERVER:-}" ]; then
  "$BACKSTOP_MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null && break; sleep 0.2; done
fi
cat > "$WORK/policy-s3.toml" <<POLICY
name = "bench"
[database]
url = "\${BENCH_DB_URL}"
[repository]
url = "\${BENCH_S3_URL}"
endpoint = "http://127.0.0.1:$MOTO_PORT"
region = "us-east-1"
[encryption]
recipients = ["$RECIPIENT"]
[restore]
jobs = $JOBS
spool_dir = "$SPOOL"
POLICY
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
export BENCH_DB_URL=$DB_URL BENCH_REPO=$WORK/repo BACKSTOP_CACHE_DIR=$WORK/cache
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic
TARGET_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/target"
"$PG_BIN/pg_dump" -Fc -Z0 -d bench -f "$WORK/bench.dump"    # warms the cache; the restore baseline's input
DUMP_BYTES=$(stat -c %s "$WORK/bench.dump")

# 398 synthetic daily snapshots before the real ones: each names the latest real snapshot's
# blobs with every 20th replaced by a blob of its own (a file in blobs/), as 5% churn would.
cat > "$WORK/history.py" <<'PY'
import datetime, glob, hashlib, json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
metas = sorted(glob.glob(os.path.join(root, "snapshots", "bench", "*", "meta.json")))
real = json.load(open(metas[-1]))
first = datetime.datetime.fromisoformat(json.load(open(metas[0]))["consistent_at"].replace("Z", "+00:00"))
for k in range(1, n + 1):
    t = first - datetime.timedelta(days=k)
    stamp = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    sid = t.strftime("%Y%m%dT%H%M%SZ") + f"-h{k:05x}"
    d = os.path.join(root, "snapshots", "bench", sid)
    os.makedirs(d)
    manifest = os.urandom(4096)
    open(os.path.join(d, "manifest.age"), "wb").write(manifest)
    blobs = []
    for i, b in enumerate(real["blobs"]):
        if (i + k) % 20 == 0:
            data = os.urandom(512)
            bid = hashlib.sha256(f"history-{k}-{i}".encode()).hexdigest()
            bd = os.path.join(root, "blobs", bid[:2])
            os.makedirs(bd, exist_ok=True)
            open(os.path.join(bd, bid), "wb").write(data)
            b = {"id": bid, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        blobs.append(b)
    meta = dict(real, id=sid, consistent_at=stamp, started_at=stamp, finished_at=stamp, blobs=blobs,
                manifest={"key": f"snapshots/bench/{sid}/manifest.age", "size": len(manifest),
                          "sha256": hashlib.sha256(manifest).hexdigest()})
    json.dump(meta, open(os.path.join(d, "meta.json"), "w"), indent=2)
PY

fresh_target() {
  psql -X -q -c "drop database if exists target with (force)" 2>/dev/null
  psql -X -q -c "create database target"
}
# The untimed preparation of each case.
prep() {
  case $1 in
    backstop_backup) rm -rf "$WORK/repo" "$WORK/cache/index"; "$BIN" init --policy "$WORK/policy.toml" 2>/dev/null ;;
    backstop_backup_history)
      rm -rf "$WORK/repo400"; cp -a "$WORK/repo" "$WORK/repo400"
      python3 "$WORK/history.py" "$WORK/repo400" 398
      BENCH_REPO=$WORK/repo400 "$BIN" backup --policy "$WORK/policy.toml" 2>/dev/null >/dev/null ;;
    pg_restore_j | backstop_restore) fresh_target ;;
    restic_backup) rm -rf "$WORK/restic"; restic init -q >/dev/null ;;
    docs_backup) rm -rf "$WORK/docrepo" "$WORK/cache/index"; "$BIN" init --policy "$WORK/policy-docs.toml" 2>/dev/null ;;
    restic_restore | docs_restore) rm -rf "$WORK/restored" ;;
    s3_backup)
      # A new bucket per round (moto keeps what it holds in memory).
      export BENCH_S3_URL=s3://bench-round$r/repo
      "${BACKSTOP_MOTO_SERVER%/*}/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$MOTO_PORT', region_name='us-east-1').create_bucket(Bucket='bench-round$r')"
      "$BIN" init --policy "$WORK/policy-s3.toml" 2>/dev/null ;;
    s3_restore) fresh_target ;;
  esac
  sync
}
# The timed command of each case.
run_case() {
  case $1 in
    pg_dump) "$PG_BIN/pg_dump" -Fc -Z0 -d bench -f "$WORK/plain.dump" ;;
    pipeline) bash -c "set -o pipefail; '$PG_BIN/pg_dump' -Fc -Z0 -d bench | zstd -3 -T0 -q | age -r $RECIPIENT | tee >(sha256sum > '$WORK/pipeline.sha') > '$WORK/pipeline.age'" ;;
    backstop_backup | backstop_backup_again) "$BIN" backup --policy "$WORK/policy.toml" ;;
    backstop_backup_history) BENCH_REPO=$WORK/repo400 "$BIN" backup --policy "$WORK/policy.toml" ;;
    pg_restore_j) "$PG_BIN/pg_restore" -j"$JOBS" -d target "$WORK/bench.dump" ;;
    backstop_restore) "$BIN" restore --policy "$WORK/policy.toml" --identity "$WORK/key.txt" --db-url "$TARGET_URL" ;;
    restic_backup) restic backup -q "$WORK/docs" ;;
    docs_backup) "$BIN" backup --policy "$WORK/policy-docs.toml" ;;
    restic_restore) restic restore -q latest --target "$WORK/restored" ;;
    docs_restore) "$BIN" restore --policy "$WORK/policy-docs.toml" --identity "$WORK/key.txt" --storage-dir "$WORK/restored" ;;
    s3_backup) "$BIN" backup --policy "$WORK/policy-s3.toml" ;;
    s3_restore) "$BIN" restore --policy "$WORK/policy-s3.toml" --identity "$WORK/key.txt" --db-url "$TARGET_URL" ;;
  esac
}
# Times a command: its wall time, the peak RSS of its largest process (as GNU time's %M), and
# the most disk the temporary files in SPOOL held at once (unnamed files included: each open
# file descriptor of every process is looked at every 0.2 s), when SPOOL is given.
cat > "$WORK/measure.py" <<'PY'
import os, resource, subprocess, sys, time
out, spool, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
def held():
    files = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(spool):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    files[(st.st_dev, st.st_ino)] = st.st_blocks * 512
            except OSError:
                pass
    return sum(files.values())
start = time.monotonic()
p = subprocess.Popen(cmd)
most = 0
while p.poll() is None:
    if spool:
        most = max(most, held())
    time.sleep(0.2)
elapsed = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(out, "w").write(f"{elapsed:.2f} {peak} {most}\n")
sys.exit(p.returncode)
PY
# Cases run in this order in even rounds and reversed in odd ones; a case that needs another
# (the unchanged backup needs the first, the restores need the backups) is kept after it.
if [ "$MODE" = restore ]; then
  ORDER=(pg_restore_j backstop_restore s3_restore)
  REVERSED=(s3_restore backstop_restore pg_restore_j)
  RATIOS=("backstop_restore pg_restore_j" "s3_restore pg_restore_j")
  # What the restores restore, made once and untimed.
  prep backstop_backup; "$BIN" backup --policy "$WORK/policy.toml" >/dev/null 2>&1
else
  ORDER=(pg_dump pipeline "backstop_backup backstop_backup_again backstop_backup_history" pg_restore_j backstop_restore
         restic_backup docs_backup restic_restore docs_restore "s3_backup s3_restore")
  # Reversed, but a restore still after its backup: baselines and backstop swap places.
  REVERSED=("s3_backup s3_restore" restic_restore restic_backup docs_backup docs_restore backstop_restore
            "backstop_backup backstop_backup_again backstop_backup_history" pg_restore_j pipeline pg_dump)
  RATIOS=("backstop_backup pg_dump" "backstop_backup pipeline" "backstop_backup_again pg_dump"
          "backstop_backup_history backstop_backup_again"
          "backstop_restore pg_restore_j" "docs_backup restic_backup" "docs_restore restic_restore"
          "s3_backup backstop_backup" "s3_restore pg_restore_j")
fi
skipped() { [[ " ${SKIP[*]} " == *" $1 "* ]]; }
S3_READY=
declare -A T M C D
# CPU-seconds the machine has spent busy (user, nice, system, irq, softirq) since boot.
busy() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat; }
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${ORDER[@]}")
  ((r % 2 == 0)) && order=("${REVERSED[@]}")
  echo "round $r: ${order[*]}" >&2
  for group in "${order[@]}"; do
    for c in $group; do
      skipped "$c" && continue
      prep "$c"
      if [ "$c" = s3_restore ] && [ "$MODE" = restore ] && [ -z "$S3_READY" ]; then
        prep s3_backup; "$BIN" backup --policy "$WORK/policy-s3.toml" >/dev/null 2>&1; S3_READY=1
      fi
      watch_dir=; [[ $c == *restore ]] && watch_dir=$SPOOL
      b0=$(busy)
      python3 "$WORK/measure.py" "$WORK/time" "$watch_dir" bash -c "$(declare -f run_case); $(declare -p BIN WORK PG_BIN RECIPIENT TARGET_URL JOBS); run_case $c" >/dev/null 2>"$WORK/err" \
        || { echo "case $c failed:"; cat "$WORK/err"; exit 1; }
      read -r t m d < "$WORK/time"
      T[$r.$c]=$t; M[$r.$c]=$((m / 1024)); D[$r.$c]=$((d / 1024)); C[$r.$c]=$(awk -v a="$b0" -v b="$(busy)" 'BEGIN { printf "%.1f", b - a }')
      printf '  %-24s %8ss  peak RSS %5s MiB  machine CPU %6s s  temporary files %7s KiB\n' "$c" "$t" "${M[$r.$c]}" "${C[$r.$c]}" "${D[$r.$c]}" >&2
    done
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
name() { if [ "$1" = pg_restore_j ]; then echo "pg_restore_j$JOBS"; else echo "$1"; fi; }
echo
echo "dataset: $DATASET, database $SIZE, $TABLES tables, dump $((DUMP_BYTES / 1048576)) MiB; documents $DOCS files, $((DOCS_BYTES / 1048576)) MiB; rounds $ROUNDS; cores $(nproc); JOBS $JOBS"
echo
# Each pair's ratio in every round and its median, of the times (T) or the CPU-seconds (C), as
# a Markdown table.
ratio_table() {
  local -n of=$2
  local line="| $1 |" rule="|---|"
  for ((r = 1; r <= ROUNDS; r++)); do line+=" round $r |"; rule+="---|"; done
  printf '%s median |\n%s---|\n' "$line" "$rule"
  for pair in "${RATIOS[@]}"; do
    read -r a b <<<"$pair"
    if skipped "$a" || skipped "$b"; then continue; fi
    printf '| %s / %s |' "$(name "$a")" "$(name "$b")"
    vals=()
    for ((r = 1; r <= ROUNDS; r++)); do v=$(ratio "${of[$r.$a]}" "${of[$r.$b]}"); vals+=("$v"); printf ' %s |' "$v"; done
    printf ' **%s** |\n' "$(printf '%s\n' "${vals[@]}" | median)"
  done
}
ratio_table "time ratio (case / baseline, same round)" T
echo
ratio_table "machine CPU-seconds ratio (same pairs)" C
echo
echo "| case | median s | max peak RSS MiB | median machine CPU s | max temporary files KiB |"
echo "|---|---|---|---|---|"
for c in pg_dump pipeline backstop_backup backstop_backup_again backstop_backup_history pg_restore_j backstop_restore restic_backup docs_backup restic_restore docs_restore s3_backup s3_restore; do
  [ -n "${T[1.$c]:-}" ] || continue
  ts=(); cs=(); mx=0; dx=0
  for ((r = 1; r <= ROUNDS; r++)); do
    ts+=("${T[$r.$c]}"); cs+=("${C[$r.$c]}")
    ((M[$r.$c] > mx)) && mx=${M[$r.$c]}
    ((D[$r.$c] > dx)) && dx=${D[$r.$c]}
  done
  printf '| %s | %s | %s | %s | %s |\n' "$(name "$c")" "$(printf '%s\n' "${ts[@]}" | median)" "$mx" "$(printf '%s\n' "${cs[@]}" | median)" "$dx"
done
