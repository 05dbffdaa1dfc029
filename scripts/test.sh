#!/usr/bin/env bash
# Runs backstop's tests, first installing what they need on a Debian machine: the PostgreSQL
# server (the tests start their own throwaway clusters with its initdb/pg_ctl), age, zstd and jq
# for the manual-recovery test, the moto S3 server and the aiosmtpd SMTP server (PyPI, in a
# virtual environment) that the tests start on loopback ports, and Chromium (headless) for the
# HTML report test, and the ko_KR.UTF-8 locale for the locale test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_deps age zstd jq runuser chromium git pdftoppm
ensure_moto
ensure_locales ko_KR.UTF-8
cargo test --all-targets --no-fail-fast "$@"
