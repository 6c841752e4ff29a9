#!/usr/bin/env bash
# The wordcount demo (`make demo`): count a generated text exactly-once with state in
# PostgreSQL, SIGKILL the worker halfway, restart it, and check the counts (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/demo.py "$@"
