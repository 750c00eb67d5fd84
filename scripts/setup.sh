#!/usr/bin/env bash
# One-time machine setup for pg_fraud on Debian 12 / Ubuntu 22.04+.
# Safe to run twice: every step checks whether it is already done and skips it.
# Run as root (or as a user with passwordless sudo).
set -euo pipefail

PGRX_VERSION=0.18.0
PG_MAJOR=15
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# 1. System packages: PostgreSQL 15 server + headers (pgrx builds against them), pg_cron
#    (scheduling retrain/maintenance), clang/libclang (bindgen inside pgrx), sudo (pgrx
#    installs the extension with `sudo cp` when tests run as the postgres user), pgbench
#    (benchmarks), python3-venv (the scikit-learn comparison in the model benchmark).
apt_pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-$PG_MAJOR-cron
          postgresql-contrib libclang-dev clang sudo pkg-config libssl-dev python3 python3-venv curl ca-certificates)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  log "apt packages present"
fi

# Debian's package creates and starts a 'main' cluster on port 5432; we never use it
# (every script starts its own cluster), so keep it stopped to free memory and the port.
if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q "online"; then
  log "stopping Debian's default cluster (pg_fraud scripts start their own)"
  $SUDO pg_ctlcluster $PG_MAJOR main stop || true
fi

# 2. cargo-pgrx, pinned: pgrx 0.19 needs Rust 1.96, this machine has 1.95.
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (rustup) first" >&2; exit 1
fi
if cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "cargo-pgrx $PGRX_VERSION present"
else
  log "installing cargo-pgrx $PGRX_VERSION (about 16 minutes on 2 cores)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# 3. Point pgrx at the system PostgreSQL (no private Postgres build).
pg_config=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
if grep -qs "pg$PG_MAJOR = \"$pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "pgrx already initialised for pg$PG_MAJOR"
else
  log "cargo pgrx init --pg$PG_MAJOR $pg_config"
  cargo pgrx init --pg$PG_MAJOR "$pg_config"
fi

# 4. The extension directories must be writable for `cargo pgrx install` as a normal user.
log "ready"
