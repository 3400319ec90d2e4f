# Sourced by run_tests.sh and demo.sh: creates $VENV (default .venv) from $REQUIREMENTS (default
# requirements.txt) once, re-installs when that file changes, and activates it. The native
# checkpoints (4.6) need transformers 5: VENV=.venv-transformers5
# REQUIREMENTS=requirements-transformers5.txt (minicpmv_ft/versions/environments.py says which).
VENV="${VENV:-.venv}"
REQUIREMENTS="${REQUIREMENTS:-requirements.txt}"
STAMP="$VENV/.requirements.sha256"
# the requirements and the constraints files they name (-c): a change to either re-installs
WANT="$(cat "$REQUIREMENTS" $(sed -n 's/^-c //p' "$REQUIREMENTS" | sed "s|^|$(dirname "$REQUIREMENTS")/|") | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV from $REQUIREMENTS ..."
    python3 -m venv "$VENV"
    # uv installs what pip would, from the same places (tools/uv_install.py reads pip's settings),
    # in about a third of the time; pip does it where uv cannot be had or cannot follow them.
    if ! { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv &&
           "$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/uv_install.py" "$VENV" "$REQUIREMENTS"; }; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    fi
    echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
# DeepSpeed compiles a CPU op on first use (cpu_adam, with optimizer offload); keep it between runs,
# one folder per environment (a build made with another environment's headers and ninja is rebuilt).
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions/$(basename "$VENV")}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
