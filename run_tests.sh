#!/usr/bin/env bash
# Sets up the virtual environments (first run: about a minute) and runs the whole test suite in
# each: the remote-code versions in .venv (requirements.txt, transformers 4.57), the native ones in
# .venv-transformers5 (the table in minicpmv_ft/versions/environments.py; tests/conftest.py picks
# each environment's tests). Extra arguments go to every pytest run, e.g. `bash run_tests.sh -k slicing`;
# `bash run_tests.sh -m quick` is the quick tier (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")"

# Every environment ("VENV REQUIREMENTS"), the default first
mapfile -t environments < <(python3 minicpmv_ft/versions/environments.py list)

set_up() {  # VENV REQUIREMENTS: set the environment up (or check it)
    (VENV=$1 REQUIREMENTS=$2; source tools/setup_venv.sh)
}

# The first environment is set up in the foreground; the others are prepared at the same time in
# the background, ready when their turn comes.
preparing=()
for index in "${!environments[@]}"; do
    [ "$index" -eq 0 ] && continue
    read -r venv requirements <<< "${environments[$index]}"
    set_up "$venv" "$requirements" & preparing[$index]=$!
done
read -r venv requirements <<< "${environments[0]}"
set_up "$venv" "$requirements"

# One pytest-xdist worker per core, each computing on one thread: the tiny models' steps gain
# little from a second thread, and a worker waiting on the processes a test started leaves its
# core to the other worker (tests/conftest.py keeps the readers of one trained result together).
# A passing test's tmp_path is removed when it ends (a failing one's is kept to look into): the
# suite's checkpoints would otherwise add up to over a gigabyte per run.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
statuses=()
for index in "${!environments[@]}"; do
    read -r venv requirements <<< "${environments[$index]}"
    if [ "$index" -gt 0 ]; then
        wait "${preparing[$index]}"
        echo "== $venv ($requirements)"
    fi
    status=0
    (VENV=$venv REQUIREMENTS=$requirements; source tools/setup_venv.sh
     python -m pytest tests -q -n auto --dist loadgroup -o tmp_path_retention_policy=failed "$@") || status=$?
    statuses+=("$status")
done
# pytest exits 5 when it collected no test: a failure, unless arguments selected tests that only
# another environment has
if [[ " ${statuses[*]} " =~ ^(\ 5)+\ $ ]]; then exit 5; fi
for status in "${statuses[@]}"; do
    if [ "$status" -ne 0 ] && { [ "$status" -ne 5 ] || [ "$#" -eq 0 ]; }; then exit "$status"; fi
done
