# Sourced by the scripts: installs, from Debian's packages, whatever of the named commands is
# missing. PostgreSQL's server is checked by its initdb under /usr/lib/postgresql.
ensure_deps() {
  local need=() cmd
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
  for cmd in "$@"; do
    case "$cmd" in
      runuser) command -v runuser >/dev/null 2>&1 || need+=(util-linux) ;;
      pdftoppm) command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils) ;;
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

# Generates the named locales (e.g. ko_KR.UTF-8) if the machine lacks them: the locale test runs
# PostgreSQL's programs as a host in that locale would, with their translations.
ensure_locales() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  local loc
  for loc in "$@"; do
    local want
    want=$(echo "$loc" | sed 's/UTF-8/utf8/')
    locale -a 2>/dev/null | grep -qx "$want" && continue
    if ! command -v localedef >/dev/null 2>&1 || [ ! -d /usr/share/i18n/locales ]; then
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends locales >/dev/null
    fi
    echo "generating the locale $loc" >&2
    $sudo localedef -i "${loc%%.*}" -f UTF-8 "$loc"
  done
}

# Installs the test servers from PyPI into one virtual environment, once per machine: the moto
# S3 server and aiosmtpd (the SMTP server the email tests start). Exports BACKSTOP_MOTO_SERVER
# for the tests and the benchmark; the tests find aiosmtpd's python beside it.
ensure_moto() {
  local venv=${BACKSTOP_MOTO_VENV:-$HOME/.cache/backstop/moto-venv}
  if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/aiosmtpd" ]; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    fi
    echo "installing the moto S3 server and aiosmtpd into $venv" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]' aiosmtpd
  fi
  export BACKSTOP_MOTO_SERVER=$venv/bin/moto_server
}
