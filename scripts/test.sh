#!/usr/bin/env bash
# Runs every test pg_fraud has, in order of cost: formatting and lints, the pure Rust unit
# tests, the alerter's tests (real Postgres clusters and fake Slack/webhook/SMTP servers),
# the extension's #[pg_test]s inside a real backend, then end-to-end tests from real client
# connections (NOTIFY on commit, concurrency, the alerter against the extension).
#
# Usage: scripts/test.sh            (as root or a user with sudo; installs what is missing)
#        SKIP_SETUP=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
started=$(date +%s)

if [ -z "${SKIP_SETUP:-}" ]; then
  step "setup (idempotent)"
  scripts/setup.sh
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "unit tests: fraud_core, fraud_models"
cargo test -p fraud_core -p fraud_models

step "alerter tests"
cargo test -p alerter

step "extension #[pg_test]s (cargo pgrx test)"
# pgrx runs the test cluster as the postgres user; its data directory's parent must be theirs.
pgrx_dir=${PGRX_TEST_DIR:-/tmp/pg_fraud_pgrx_test}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO rm -rf "$pgrx_dir"
$SUDO mkdir -p "$pgrx_dir"
$SUDO chown postgres "$pgrx_dir"
cargo pgrx test pg15 -p pg_fraud --runas postgres --pgdata "$pgrx_dir/data"

step "install the extension for end-to-end tests"
(cd pg_fraud && cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config --sudo)
cargo build -p alerter

step "end-to-end tests (pytest against throwaway clusters)"
scripts/pyenv.sh
ALERTER_BIN="$root/target/debug/alerter" .venv/bin/python -m pytest tests -q -p no:cacheprovider

step "all tests passed in $(( $(date +%s) - started ))s"
