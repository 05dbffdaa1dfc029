# Sourced by the scripts: installs, from Debian's packages, whatever of the named commands is
# missing. PostgreSQL's server is checked by its initdb under /usr/lib/postgresql.
ensure_deps() {
  local need=() cmd
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
  for cmd in "$@"; do
    case "$cmd" in
      runuser) command -v runuser >/dev/null 2>&1 || need+=(util-linux) ;;
      *) command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd") ;;
    esac
  done
  if ((${#need[@]})); then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing from Debian's packages: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}
