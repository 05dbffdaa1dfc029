#!/usr/bin/env bash
# Runs backstop's tests, first installing what they need on a Debian machine: the PostgreSQL
# server (the tests start their own throwaway clusters with its initdb/pg_ctl), and age, zstd
# and jq for the manual-recovery test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps age zstd jq runuser
cargo test --all-targets "$@"
