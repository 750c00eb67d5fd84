#!/usr/bin/env bash
# Creates .venv with what the end-to-end tests, the demo data generator and the benchmarks
# need (psycopg, pytest; scikit-learn only for the model benchmark). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
want="psycopg[binary]==3.2.* pytest==8.*"
[ "${1:-}" = "--bench" ] && want="$want numpy scikit-learn"
if ! .venv/bin/python -c "import psycopg, pytest" 2>/dev/null || [ "${1:-}" = "--bench" ]; then
  .venv/bin/pip install -q --disable-pip-version-check $want
fi
