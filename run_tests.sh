#!/usr/bin/env bash
# Sets up the virtual environments (first run: a few minutes) and runs the whole test suite:
# the remote-code versions (2.0-4.5) in .venv (requirements.txt, transformers 4.57), then
# MiniCPM-V 4.6 in .venv-4.6 (requirements-4.6.txt, transformers 5.x; tests/conftest.py picks
# each environment's tests). Extra arguments go to both pytest runs, e.g. `bash run_tests.sh -k slicing`.
set -euo pipefail
cd "$(dirname "$0")"

run_in() {  # VENV REQUIREMENTS pytest-arguments...: pytest's exit status in that environment
    (VENV=$1 REQUIREMENTS=$2; shift 2; source tools/setup_venv.sh; python -m pytest tests -q "$@")
}

default=0; native=0
run_in .venv requirements.txt "$@" || default=$?
echo "== MiniCPM-V 4.6 (.venv-4.6, transformers 5.x)"
run_in .venv-4.6 requirements-4.6.txt "$@" || native=$?
# pytest exits 5 when it collected no test: a failure, unless arguments selected tests that only
# the other environment has
if [ "$default" -eq 5 ] && [ "$native" -eq 5 ]; then exit 5; fi
for status in "$default" "$native"; do
    if [ "$status" -ne 0 ] && { [ "$status" -ne 5 ] || [ "$#" -eq 0 ]; }; then exit "$status"; fi
done
