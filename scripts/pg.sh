# Sourced by demo.sh and bench.sh: a throwaway PostgreSQL cluster on a free loopback port.
# pg_start DIR PASSWORD sets PG_PORT and PG_BIN; pg_stop DIR stops it. As root, the server
# runs as the postgres user (initdb refuses root).
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

pg_start() {
  local dir=$1 password=$2
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  printf '%s' "$password" > "$dir/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
  as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pwfile" \
    --no-locale -E UTF8 >/dev/null
  PG_PORT=$(free_port)
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
    -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
}

pg_stop() {
  as_pg "$PG_BIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
