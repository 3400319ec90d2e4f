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
# time of the slowest rather than the sum.
setups=()
for environment in "${environments[@]}"; do
    read -r venv requirements <<< "$environment"
    (VENV=$venv REQUIREMENTS=$requirements; source tools/setup_venv.sh) & setups+=($!)
done
for setup in "${setups[@]}"; do wait "$setup"; done

statuses=()
for environment in "${environments[@]}"; do
    read -r venv requirements <<< "$environment"
    [ "$venv" = .venv ] || echo "== $venv ($requirements)"
    status=0
    (VENV=$venv REQUIREMENTS=$requirements; source tools/setup_venv.sh; python -m pytest tests -q "$@") || status=$?
    statuses+=("$status")
done
# pytest exits 5 when it collected no test: a failure, unless arguments selected tests that only
# another environment has
if [[ " ${statuses[*]} " =~ ^(\ 5)+\ $ ]]; then exit 5; fi
for status in "${statuses[@]}"; do
    if [ "$status" -ne 0 ] && { [ "$status" -ne 5 ] || [ "$#" -eq 0 ]; }; then exit "$status"; fi
done
