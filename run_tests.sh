#!/usr/bin/env bash
# Sets up the virtual environments (first run: a few minutes) and runs the whole test suite:
# the remote-code versions in .venv (requirements.txt, transformers 4.57), then each native
# version VERSION in .venv-VERSION from its requirements-VERSION.txt (tests/conftest.py picks each
# environment's tests). Extra arguments go to every pytest run, e.g. `bash run_tests.sh -k slicing`;
# `bash run_tests.sh -m quick` is the quick tier (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")"

# Every environment: .venv, then .venv-VERSION for each requirements-VERSION.txt
environments=(".venv requirements.txt")
for requirements in requirements-*.txt; do
    version=${requirements#requirements-}; version=${version%.txt}
    environments+=(".venv-$version $requirements")
done

# Set up (or check) all of them at once: pip installs on one core, so side by side they take the
# time of the slowest rather than the sum. Each then builds DeepSpeed's CPU communication op (half
# a minute, once per environment) before any test waits on it.
setups=()
for environment in "${environments[@]}"; do
    read -r venv requirements <<< "$environment"
    (VENV=$venv REQUIREMENTS=$requirements; source tools/setup_venv.sh
     python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" > /dev/null 2>&1 || true) &
    setups+=($!)
done
for setup in "${setups[@]}"; do wait "$setup"; done

# One pytest-xdist worker per core, each computing on one thread: the tiny models' steps gain
# little from a second thread, and a worker waiting on the processes a test started leaves its
# core to the other worker (tests/conftest.py keeps the readers of one trained result together).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
statuses=()
for environment in "${environments[@]}"; do
    read -r venv requirements <<< "$environment"
    [ "$venv" = .venv ] || echo "== $venv ($requirements)"
    status=0
    (VENV=$venv REQUIREMENTS=$requirements; source tools/setup_venv.sh
     python -m pytest tests -q -n auto --dist loadgroup "$@") || status=$?
    statuses+=("$status")
done
# pytest exits 5 when it collected no test: a failure, unless arguments selected tests that only
# another environment has
if [[ " ${statuses[*]} " =~ ^(\ 5)+\ $ ]]; then exit 5; fi
for status in "${statuses[@]}"; do
    if [ "$status" -ne 0 ] && { [ "$status" -ne 5 ] || [ "$#" -eq 0 ]; }; then exit "$status"; fi
done
