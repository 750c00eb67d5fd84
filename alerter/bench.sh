#!/usr/bin/env bash
# Delivery benchmark of the alerter: commit -> webhook latency at a steady rate, and the
# sustained delivery rate on a large backlog. See alerter/BENCHMARKS.md for results.
#
# What it does, top to bottom:
#   1. builds the `alerter` binary and the `bench` example with cargo's built-in `bench`
#      profile, which inherits the workspace's `release` settings (fat LTO, one codegen
#      unit): the figures are those of the binary we ship (about 3.5 min on 2 cores);
#   2. runs the example, which starts its own throw-away PostgreSQL 15 cluster (as the
#      `postgres` user when run as root) with the outbox schema from
#      pg_fraud/src/sql/outbox.sql (the extension need not be installed), a local webhook
#      receiver, and the alerter binary as a separate process with rate limits off;
#   3. prints Markdown tables.
# Extra arguments go to the example: --rate 100 --seconds 30 --backlog 20000
#   --concurrency 64 --batch-size 500 --durable (fsync and synchronous_commit on; the
#   default cluster has them off). Safe to run repeatedly: nothing outlives the run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --profile bench -p alerter --bin alerter --example bench
# The built-in `bench` profile writes to the `release` directory.
out="$CARGO_TARGET_DIR/release"
"$out/examples/bench" --alerter "$out/alerter" "$@"
