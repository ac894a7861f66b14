#!/usr/bin/env bash
# Run the whole suite. pytest's exit code 5 (no tests collected) is a failure, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:/usr/sbin:$PATH"
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "test: pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
