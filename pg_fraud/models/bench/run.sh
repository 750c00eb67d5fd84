#!/usr/bin/env bash
# Benchmarks fraud_models against scikit-learn on the same synthetic CSV.
#
#   pg_fraud/models/bench/run.sh [ROWS ...]      (default: 100000 1000000)
#
# Steps, each safe to re-run:
#   1. a Python venv in bench/.venv with scikit-learn, numpy and imbalanced-learn from PyPI
#      (skipped if present; imbalanced-learn provides the balanced random forest that is the
#      like-for-like reference for fraud_models' classifier);
#   2. one CSV per size in bench/data/ (skipped if present), written by sklearn_bench.py gen;
#   3. the Rust side: examples/bench.rs built with --release, JSON into bench/results/;
#   4. the scikit-learn side on the same CSV, JSON into bench/results/;
#   5. a comparison table per size.
# Both sides are single-threaded (n_jobs=1), so the numbers compare algorithms, not cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target-models}"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
max_samples="${RF_MAX_SAMPLES:-20000}"

if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet scikit-learn numpy imbalanced-learn
fi
py="$here/.venv/bin/python"
mkdir -p "$here/data" "$here/results"

(cd "$repo" && cargo build --quiet --release -p fraud_models --example bench)
bench_bin="$CARGO_TARGET_DIR/release/examples/bench"

for n in "${sizes[@]}"; do
    csv="$here/data/fraud_$n.csv"
    if [ ! -s "$csv" ]; then
        echo "generating $csv" >&2
        "$py" "$here/sklearn_bench.py" gen "$n" "$csv.tmp" && mv "$csv.tmp" "$csv"
    fi
    echo "rust: $n rows" >&2
    "$bench_bin" "$csv" "$max_samples" > "$here/results/rust_$n.json"
    echo "scikit-learn: $n rows" >&2
    "$py" "$here/sklearn_bench.py" run "$csv" "$max_samples" > "$here/results/sklearn_$n.json"
    "$py" "$here/sklearn_bench.py" table "$here/results/rust_$n.json" "$here/results/sklearn_$n.json"
done
