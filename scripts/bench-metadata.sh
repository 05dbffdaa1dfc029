#!/usr/bin/env bash
# Benchmarks of the operations that read only metadata (part of scripts/bench.sh;
# `CASES=metadata bash scripts/bench.sh` runs them alone).
#
# Prune: a synthetic local repository of 400 daily snapshots referencing 50,125 distinct blobs (each
# snapshot 250 blobs, half of them shared with the next), where `keep_daily = 200` removes the
# 200 oldest snapshots and about 25,000 blobs. Prune reads only meta.json files and the store
# listing, so the snapshots need no real content.
#
# Baseline it names and divides by: `find -delete` of exactly the files prune removes (the
# file system's own floor for the same deletions). Targets: prune under 20 s, peak RSS under
# 200 MiB. Each run starts from a fresh copy of the repository (untimed). RUNS (default 3).
#
# Report: a synthetic repository of 1,000 snapshots and 2,000 run records (a backup and a
# verify a day), against `cat` of the same meta.json and record files. Target: under 2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps jq time
RUNS=${RUNS:-3}
cargo build --release --quiet
BIN=$PWD/target/release/backstop
WORK=$(mktemp -d /var/tmp/backstop-bench-metadata.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

RECIPIENT=$("$BIN" keygen --out "$WORK/key.txt")
cat > "$WORK/policy.toml" <<POLICY
name = "bench"
[objectives]
retention = "1d"
[storage]
kind = "dir"
path = "$WORK"
buckets = ["unused"]
[repository]
url = "$WORK/template"
[encryption]
recipients = ["$RECIPIENT"]
[retention]
keep_daily = 200
POLICY
"$BIN" init --policy "$WORK/policy.toml" 2>/dev/null
echo "generating 400 snapshots and 50,125 blobs ..." >&2
cat > "$WORK/gen.py" <<'PY'
import datetime, hashlib, json, os, sys
root, recipient, SNAPS, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
PER, STEP = 250, 125
def blob(i):
    h = hashlib.sha256(f"blob-{i}".encode()).hexdigest()
    data = h.encode() * 8                       # 512 bytes
    return h, data
ids = {}
for i in range(STEP * (SNAPS - 1) + PER):
    h, data = blob(i)
    d = os.path.join(root, "blobs", h[:2])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, h), "wb") as f:
        f.write(data)
    ids[i] = {"id": h, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
for s in range(SNAPS):
    t = now - datetime.timedelta(days=SNAPS - s, hours=1)
    sid = t.strftime("%Y%m%dT%H%M%SZ") + f"-{s:06x}"
    d = os.path.join(root, "snapshots", "bench", sid)
    os.makedirs(d, exist_ok=True)
    manifest = os.urandom(256)
    with open(os.path.join(d, "manifest.age"), "wb") as f:
        f.write(manifest)
    blobs = [ids[i] for i in range(STEP * s, STEP * s + PER)]
    meta = {
        "format": 1, "id": sid, "policy": "bench",
        "consistent_at": t.isoformat().replace("+00:00", "Z"),
        "started_at": t.isoformat().replace("+00:00", "Z"),
        "finished_at": t.isoformat().replace("+00:00", "Z"),
        "tool_version": "bench", "db": None, "storage": None,
        "bytes_referenced": sum(b["size"] for b in blobs),
        "encryption": {"scheme": "age", "recipients": [recipient]},
        "manifest": {"key": f"snapshots/bench/{sid}/manifest.age", "size": len(manifest),
                     "sha256": hashlib.sha256(manifest).hexdigest()},
        "blobs": blobs,
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
    if RUNS:
        runs = os.path.join(root, "runs", "bench")
        os.makedirs(runs, exist_ok=True)
        stamp = t.strftime("%Y%m%dT%H%M%SZ")
        for kind, extra in (("backup", {}), ("verify", {"restore_s": 100.0 + s % 50, "problems": []})):
            rec = {"kind": kind, "ok": True, "snapshot_id": sid, "policy": "bench",
                   "started_at": meta["started_at"], "finished_at": meta["finished_at"], **extra}
            with open(os.path.join(runs, f"{stamp}-{kind}-{sid}.json"), "w") as f:
                json.dump(rec, f)
PY
python3 "$WORK/gen.py" "$WORK/template" "$RECIPIENT" 400 0

# What prune will remove, from a dry run, for the baseline's file list.
sed -i "s|$WORK/template|$WORK/repo|" "$WORK/policy.toml"
cp -a "$WORK/template" "$WORK/repo"
"$BIN" prune --policy "$WORK/policy.toml" --dry-run --json 2>/dev/null > "$WORK/plan.json"
jq -r '.snapshots_removed[]' "$WORK/plan.json" | sed "s|^|$WORK/repo/snapshots/bench/|" > "$WORK/dirs"
python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
keep = set()
removed = set(l.strip().rsplit("/", 1)[1] for l in open(os.path.join(work, "dirs")))
snaps = os.path.join(work, "template", "snapshots", "bench")
for sid in os.listdir(snaps):
    if sid not in removed:
        keep.update(b["id"] for b in json.load(open(os.path.join(snaps, sid, "meta.json")))["blobs"])
with open(os.path.join(work, "files"), "w") as out:
    for sid in removed:
        for name in ("meta.json", "manifest.age"):
            out.write(os.path.join(work, "repo", "snapshots", "bench", sid, name) + "\n")
    for d in os.listdir(os.path.join(work, "template", "blobs")):
        for h in os.listdir(os.path.join(work, "template", "blobs", d)):
            if h not in keep:
                out.write(os.path.join(work, "repo", "blobs", d, h) + "\n")
PY
FILES=$(wc -l < "$WORK/files")

fresh() { rm -rf "$WORK/repo"; cp -a "$WORK/template" "$WORK/repo"; }
measure() {   # NAME COMMAND...: median time and largest peak RSS over RUNS fresh copies
  local name=$1; shift; local times=() rss=0 t m i
  for ((i = 0; i < RUNS; i++)); do
    fresh
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null 2>&1
    read -r t m < "$WORK/time"; times+=("$t"); (( m > rss )) && rss=$m
  done
  printf '%s %s %s\n' "$name" "$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$((rss / 1024))" >> "$WORK/results"
  echo "  $name: runs ${times[*]} s, peak RSS $((rss / 1024)) MiB" >&2
}
measure find_delete bash -c "xargs -a '$WORK/files' rm -f"
measure backstop_prune "$BIN" prune --policy "$WORK/policy.toml" --json

fresh
"$BIN" prune --policy "$WORK/policy.toml" --json 2>/dev/null > "$WORK/done.json"
echo
echo "prune: 400 snapshots, 50,125 blobs; removed $(jq '.snapshots_removed | length' "$WORK/done.json") snapshots, $(jq .blobs_deleted "$WORK/done.json") blobs ($(jq .bytes_freed "$WORK/done.json") bytes); baseline deletes the same $FILES files; runs: $RUNS; cores: $(nproc)"
awk 'NR == 1 { base = $2 } { printf "%-44s %9s %8.2fx %14s\n", ($1 == "find_delete" ? "rm of the same files (baseline)" : "backstop prune"), $2, (base > 0 ? $2 / base : 0), $3 }' "$WORK/results"
echo "targets: backstop prune < 20 s, peak RSS < 200 MiB"

echo "generating 1,000 snapshots and 2,000 run records for the report ..." >&2
rm -rf "$WORK/repo" "$WORK/blobs-unused"
sed -i "s|$WORK/repo|$WORK/reportrepo|" "$WORK/policy.toml"
cp "$WORK/template/backstop.json" "$WORK/backstop.json"
mkdir -p "$WORK/reportrepo" && cp "$WORK/backstop.json" "$WORK/reportrepo/"
python3 "$WORK/gen.py" "$WORK/reportrepo" "$RECIPIENT" 1000 2
: > "$WORK/results"
fresh() { :; }
measure cat_files bash -c "find '$WORK/reportrepo/snapshots' '$WORK/reportrepo/runs' -name '*.json' -exec cat {} + > /dev/null"
# exit 3 (a synthetic history is not compliant) is not a failure of the benchmark
measure backstop_report bash -c "'$BIN' report --policy '$WORK/policy.toml' --window 1100d --format json; [ \$? -le 3 ]"
echo
echo "report: 1,000 snapshots, $(find "$WORK/reportrepo/runs" -name '*.json' | wc -l) run records; runs: $RUNS"
awk 'NR == 1 { base = $2 } { printf "%-44s %9s %8.2fx %14s\n", ($1 == "cat_files" ? "cat of the same files (baseline)" : "backstop report --format json"), $2, (base > 0 ? $2 / base : 0), $3 }' "$WORK/results"
echo "target: backstop report < 2 s"
