#!/usr/bin/env bash
# Runs the whole test suite in the project's virtual environment.
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 "$@" tests
rc=$?
if [ $rc -eq 5 ]; then
  echo "run_tests: pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
