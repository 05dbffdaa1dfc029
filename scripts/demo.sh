#!/usr/bin/env bash
# The main job end to end on the embedded default: a throwaway local PostgreSQL holding a
# Supabase-shaped sample database, a local-directory repository, then keygen, init, two
# backups of the database, a documents bucket, configuration files and a Git repository (the
# second deduplicated), the snapshot list,
# prune (a dry run, then one snapshot erased on purpose), the compliance report, verify (a restore into a temporary
# database, compared table by table, timed against the RTO), check, and a restore into a new
# database whose every table is compared with the original (documents, files and code too),
# a restore to a moment between two snapshots from the change stream, and the generated
# recovery runbook. Everything lives in a temporary directory
# that is removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps jq runuser git
. scripts/pg.sh

cargo build --release --quiet
BIN=$PWD/target/release/backstop
WORK=$(mktemp -d /tmp/backstop-demo.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  pg_stop "$WORK/pg"
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "start a throwaway PostgreSQL and load the sample data"
PASSWORD=demo-$RANDOM-pw
# wal_level = logical: the policy's [stream] follows the database through a logical slot.
PG_EXTRA_OPTS="-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4" \
  pg_start "$WORK/pg" "$PASSWORD"
export PGPASSWORD=$PASSWORD
psql() { command psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "create database shop"
psql -d shop -f tests/fixtures/supabase.sql >/dev/null
echo "PostgreSQL on 127.0.0.1:$PG_PORT, database shop"

export BACKSTOP_DEMO_DB_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/shop"
export BACKSTOP_DEMO_REPO="$WORK/repo"
export BACKSTOP_DEMO_SCRATCH_URL="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/postgres"

step "a documents bucket (directory source): one file per storage.objects row, one an incompressible scan"
export BACKSTOP_DEMO_DOCS="$WORK/docs"
psql -d shop -At -c "select name from storage.objects where bucket_id = 'documents' order by name" \
  | while IFS= read -r name; do
      mkdir -p "$WORK/docs/documents/$(dirname "$name")"
      printf 'Menu card %s: kimchi jjigae, bibimbap\n' "$name" >"$WORK/docs/documents/$name"
    done
first=$(find "$WORK/docs/documents" -type f | sort | sed -n 1p)
head -c 3000000 /dev/urandom >"$first"
find "$WORK/docs" -type f | wc -l | xargs echo "files:"

step "the application: configuration files (one a 0600 secret, one a link) and its Git repository"
export BACKSTOP_DEMO_CONFIG="$WORK/etc/foodbiz" BACKSTOP_DEMO_GIT="$WORK/srv/api"
mkdir -p "$BACKSTOP_DEMO_CONFIG/conf.d" "$BACKSTOP_DEMO_GIT"
printf 'workers: 4\nlog_level: info\n' >"$BACKSTOP_DEMO_CONFIG/app.yaml"
printf 'OPENAI_API_KEY=sk-demo\n' >"$BACKSTOP_DEMO_CONFIG/secret.env"; chmod 600 "$BACKSTOP_DEMO_CONFIG/secret.env"
printf 'limit 100\n' >"$BACKSTOP_DEMO_CONFIG/conf.d/limits.conf"
ln -s app.yaml "$BACKSTOP_DEMO_CONFIG/current.yaml"
echo scratch >"$BACKSTOP_DEMO_CONFIG/session.tmp"
g() { git -C "$BACKSTOP_DEMO_GIT" -c user.name=demo -c user.email=demo@example.com "$@"; }
g init -q -b main
printf 'from fastapi import FastAPI\napp = FastAPI()\n' >"$BACKSTOP_DEMO_GIT/main.py"
g add . && g commit -q -m "first release" && g tag v1.0
g checkout -q -b feature/chatbot && echo "# chatbot" >"$BACKSTOP_DEMO_GIT/chat.py" && g add . && g commit -q -m chatbot
g checkout -q main
g for-each-ref --format='  %(refname) %(objectname:short)'

step "backstop keygen (the identity stays with the operator; the policy holds its public key)"
BACKSTOP_DEMO_RECIPIENT=$("$BIN" keygen --out "$WORK/identity.txt")
export BACKSTOP_DEMO_RECIPIENT
echo "$BACKSTOP_DEMO_RECIPIENT"

step "backstop policy validate local"
"$BIN" policy validate local

step "backstop init --policy local"
"$BIN" init --policy local

step "backstop backup --policy local"
"$BIN" backup --policy local --json | jq -c '{ok, snapshot_id, consistent_at, duration_s, db, storage: (.storage | {objects, bytes_plain, bytes_stored}), files, git}'
FIRST=$(ls "$BACKSTOP_DEMO_REPO/snapshots/local")

step "a second backup of the unchanged database stores almost nothing new"
"$BIN" backup --policy local --json | jq -c '{ok, snapshot_id, duration_s, db, storage: (.storage | {objects, objects_reused, bytes_stored}), files: (.files | {files, bytes_stored}), git: (.git | {bytes_stored})}'

step "backstop snapshots --policy local"
"$BIN" snapshots --policy local

step "backstop verify --policy local (restore into a temporary database, compare, time it)"
"$BIN" verify --policy local --identity "$WORK/identity.txt" --json \
  | jq -c '{ok, snapshot_id, restore_s, rto_s, rto_met, tables: (.tables | length), all_tables_equal: ([.tables[].checksum_ok] | all), files_checked, git_checked, queries, problems}'

step "backstop check --policy local --read-data (the stored bytes, without the key)"
"$BIN" check --policy local --read-data

step "backstop prune --policy local --dry-run (every snapshot is recent: the retention floor keeps all)"
"$BIN" prune --policy local --dry-run

step "backstop prune --policy local --snapshot FIRST --force (erase one snapshot on purpose)"
"$BIN" prune --policy local --snapshot "$FIRST" --force --json \
  | jq -c '{ok, snapshots_removed, snapshots_kept: [.snapshots_kept[].id], blobs_deleted, bytes_freed}'
"$BIN" check --policy local --read-data

step "backstop report --policy local --window 1d (RPO/RTO compliance from the repository alone, no key)"
# A repository minutes old cannot yet reach back objectives.retention (35d): the report says so
# and exits 3; every other control is judged on the runs above.
set +e
"$BIN" report --policy local --window 1d
echo "report exit code: $? (3 = not compliant)"
"$BIN" report --policy local --window 1d --format html --out "$WORK/report.html" 2>&1
set -e
grep -c 'class="point"' "$WORK/report.html" | xargs echo "recovery points drawn on the HTML timeline:"

step "a lost backstop.json: init refuses to start over, init --recover rebuilds it from the manifests"
salt=$(jq -r .dedup_salt "$BACKSTOP_DEMO_REPO/backstop.json")
rm "$BACKSTOP_DEMO_REPO/backstop.json"
if "$BIN" init --policy local 2>&1; then echo "init wrote a new salt over old snapshots"; exit 1; fi
"$BIN" init --recover --policy local --identity "$WORK/identity.txt"
[ "$(jq -r .dedup_salt "$BACKSTOP_DEMO_REPO/backstop.json")" = "$salt" ] \
  && echo "backstop.json recovered with its original salt" || { echo "salt differs"; exit 1; }

step "backstop restore --policy local --snapshot latest into a new database"
RESTORED="postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/shop_restored"
"$BIN" restore --policy local --identity "$WORK/identity.txt" --db-url "$RESTORED" \
  --storage-dir "$WORK/restored-docs" --files-dir "$WORK/restored-files" --git-dir "$WORK/restored-git" --json \
  | jq -c '{ok, snapshot_id, duration_s, target, db, storage, files, git}'
diff -r "$WORK/docs/documents" "$WORK/restored-docs/documents" && echo "restored documents equal the originals"
diff -r --exclude='*.tmp' "$BACKSTOP_DEMO_CONFIG" "$WORK/restored-files/config$BACKSTOP_DEMO_CONFIG" \
  && stat -c '%a %n' "$WORK/restored-files/config$BACKSTOP_DEMO_CONFIG/secret.env" \
  && echo "restored configuration equals the original (modes kept, *.tmp excluded)"
[ "$(g for-each-ref)" = "$(git -C "$WORK/restored-git/api" for-each-ref refs/heads refs/tags)" ] \
  && echo "restored repository has every branch and tag at its commit"

step "compare every table of the original and the restored database"
q="select format('%I.%I', schemaname, relname) from pg_stat_user_tables order by 1"
diff_found=0
while read -r t; do
  a=$(psql -d shop -At -c "select count(*) || ' ' || coalesce(md5(string_agg(x::text, '|' order by x::text)), '') from $t x")
  b=$(psql -d shop_restored -At -c "select count(*) || ' ' || coalesce(md5(string_agg(x::text, '|' order by x::text)), '') from $t x")
  if [ "$a" = "$b" ]; then printf '  %-40s %s rows  equal\n' "$t" "${a%% *}"
  else printf '  %-40s DIFFERS: %s vs %s\n' "$t" "$a" "$b"; diff_found=1; fi
done < <(psql -d shop -At -c "$q")
[ "$diff_found" = 0 ] && echo "restored database equals the original" || { echo "restore differs"; exit 1; }

step "continuous protection: backstop stream --setup, then the stream follows the database"
"$BIN" stream --setup --policy local
"$BIN" stream --policy local 2>"$WORK/stream.log" &
STREAM_PID=$!
sealed() { # waits until the slot is confirmed past every transaction committed so far
  local want; want=$(psql -d shop -At -c "select pg_current_wal_insert_lsn()")
  for _ in $(seq 1 150); do
    [ "$(psql -d shop -At -c "select confirmed_flush_lsn >= '$want' from pg_replication_slots where slot_name = 'backstop_local'")" = t ] && return 0
    sleep 0.2
  done
  echo "the stream did not seal in 30s:"; cat "$WORK/stream.log"; return 1
}
psql -d shop -At -c "update public.orders set status = 'paid' where id = (select min(id) from public.orders)" >/dev/null
sealed
BEFORE_INCIDENT=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
GOOD=$(psql -d shop -At -c "select count(*) || ' orders, ' || count(*) filter (where status = 'paid') || ' paid' from public.orders")
echo "at $BEFORE_INCIDENT: $GOOD"
sleep 1
psql -d shop -c "delete from public.orders where status = 'paid'" >/dev/null
sealed
echo "then an incident: $(psql -d shop -At -c "select count(*) from public.orders") orders left"
"$BIN" stream --status --policy local --json | jq -c '{slot, active, segments, last_commit_at, lag_bytes, unprotected_tables}'

step "backstop restore --policy local --before (the moment before the incident, between snapshots)"
"$BIN" restore --policy local --identity "$WORK/identity.txt" --before "$BEFORE_INCIDENT" \
  --only db --db-url "postgres://postgres:$PASSWORD@127.0.0.1:$PG_PORT/shop_before_incident" --json \
  | jq -c '{ok, snapshot_id, stream}'
AFTER=$(psql -d shop_before_incident -At -c "select count(*) || ' orders, ' || count(*) filter (where status = 'paid') || ' paid' from public.orders")
echo "restored to $BEFORE_INCIDENT: $AFTER"
[ "$AFTER" = "$GOOD" ] && echo "the database is back as it was before the incident" || { echo "differs: $AFTER vs $GOOD"; exit 1; }
kill -TERM "$STREAM_PID"; wait "$STREAM_PID" || true

step "backstop runbook --policy local (the recovery procedure, with this policy's names and facts)"
"$BIN" runbook --policy local --out "$WORK/runbook.md"
grep '^##' "$WORK/runbook.md"
sed -n '/^## 3. Full disaster recovery/,/^### 3.3/p' "$WORK/runbook.md" | sed -n 1,12p
