# Sourced by run_tests.sh and demo.sh: creates .venv from requirements.txt once (re-installs
# when requirements.txt changes) and activates it.
VENV="${VENV:-.venv}"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV from requirements.txt ..."
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
# DeepSpeed compiles its CPU ops (shm_comm, cpu_adam) on first use; keep them between runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
