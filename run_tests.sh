#!/usr/bin/env bash
# Sets up the virtual environment (first run: a few minutes) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -k slicing`.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_venv.sh
# pytest exits 5 when it collected no test: that is a failure here, as any other non-zero code.
python -m pytest tests -q "$@"
