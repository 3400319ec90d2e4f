#!/usr/bin/env bash
# Full fine-tuning of MiniCPM-V with DeepSpeed, on one node or several.
# Edit the lines below or set them in the environment; any finetune.py flag given to this
# script (sh finetune_ds.sh --learning_rate 2e-6) overrides the defaults here.
set -eu
CALLER_DIR=$(pwd)   # relative DATA, EVAL_DATA, OUTPUT_DIR, MODEL, DS_CONFIG are taken from here
cd "$(dirname "$0")"

MODEL=${MODEL:-openbmb/MiniCPM-V-4_5}   # or another MiniCPM-V checkpoint (README lists them), or a local folder
DATA=${DATA:-path/to/train.json}        # JSON list or JSON Lines, see docs/data.md
EVAL_DATA=${EVAL_DATA:-}                # optional: evaluated every 10% of the steps and at the end
LLM_TYPE=${LLM_TYPE:-}                  # empty: read from the checkpoint; else a version or alias (finetune.py --help)
OUTPUT_DIR=${OUTPUT_DIR:-output/minicpmv_full}   # relative: under the folder you start the script from
DS_CONFIG=${DS_CONFIG-ds_config_zero2.json}   # ds_config_zero3.json for large models; empty: no DeepSpeed

# A relative path names a file under the folder the script was started from (DS_CONFIG: or the
# one of this repo, e.g. the default). MODEL stays a hub id unless such a folder exists there.
from_caller() {
    case "$1" in
        ""|/*) printf '%s' "$1" ;;
        *) if [ -e "$CALLER_DIR/$1" ] || [ "${2:-}" = always ]; then printf '%s/%s' "$CALLER_DIR" "$1"; else printf '%s' "$1"; fi ;;
    esac
}
DATA=$(from_caller "$DATA" always)
EVAL_DATA=$(from_caller "$EVAL_DATA" always)
OUTPUT_DIR=$(from_caller "$OUTPUT_DIR" always)
MODEL=$(from_caller "$MODEL")
DS_CONFIG=$(from_caller "$DS_CONFIG")

# The project's environment (bash run_tests.sh or demo.sh make it) without activating it by hand:
# the one MODEL's checkpoint needs (.venv; .venv-transformers5 for a native checkpoint folder:
# minicpmv_ft/versions/environments.py), or VENV if you set it.
# A relative VENV is under this repo (or the folder the script was started from), an absolute
# one where it says; a VENV you set that holds no python stops here rather than fall back.
ENVIRONMENT=$(python3 minicpmv_ft/versions/environments.py model "$MODEL")   # "VENV REQUIREMENTS"
CHOSEN_VENV=${VENV:-}
VENV=${VENV:-${ENVIRONMENT%% *}}
case "$VENV" in
    /*) ;;
    *) if [ ! -x "$PWD/$VENV/bin/python" ] && [ -x "$CALLER_DIR/$VENV/bin/python" ]; then VENV="$CALLER_DIR/$VENV"; else VENV="$PWD/$VENV"; fi ;;
esac
if [ -x "$VENV/bin/python" ]; then
    PATH="$VENV/bin:$PATH"
elif [ -n "$CHOSEN_VENV" ]; then
    echo "finetune: VENV=$CHOSEN_VENV has no bin/python ($VENV/bin/python); make it with" \
         "'VENV=$CHOSEN_VENV bash tools/setup_venv.sh' or unset VENV" >&2
    exit 1
elif ! python -c 'import transformers, peft' 2>/dev/null; then
    echo "finetune: this python lacks the requirements and there is no $(basename "$VENV") here; make it with" \
         "'VENV=$(basename "$VENV") REQUIREMENTS=${ENVIRONMENT#* } bash tools/setup_venv.sh'" >&2
    exit 1
fi

GPUS_PER_NODE=${GPUS_PER_NODE:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
# Each process's share of the cores (torchrun would set 1 and print a warning about it).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(python -c "import os; print(max(1, len(os.sched_getaffinity(0)) // $GPUS_PER_NODE))")}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-}   # one node: this machine; several: node 0's address, required
# One node: a free port unless MASTER_PORT is set (two runs on a machine never collide).
# Several nodes: every node must be given the same MASTER_ADDR and MASTER_PORT.
MASTER_PORT=${MASTER_PORT:-$([ "$NNODES" = 1 ] && echo auto || echo 6001)}

if [ ! -f "$DATA" ]; then
    echo "finetune: DATA=$DATA does not exist; set DATA to your training file (see docs/data.md)" >&2
    exit 1
fi
if [ -n "$EVAL_DATA" ] && [ ! -f "$EVAL_DATA" ]; then
    echo "finetune: EVAL_DATA=$EVAL_DATA does not exist" >&2
    exit 1
fi

# exec: the script's pid becomes the launcher, so a signal to it reaches the run. The launcher is
# torchrun that forwards SIGTERM / Ctrl-C to the workers once and waits for their checkpoint
# (minicpmv_ft/launch.py); the run then exits 128+signal.
exec python -m minicpmv_ft.launch --nproc_per_node "$GPUS_PER_NODE" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    finetune.py \
    --model_name_or_path "$MODEL" \
    --data_path "$DATA" \
    ${EVAL_DATA:+--eval_data_path "$EVAL_DATA" --eval_strategy steps --eval_steps 0.1} \
    ${LLM_TYPE:+--llm_type "$LLM_TYPE"} \
    ${DS_CONFIG:+--deepspeed "$DS_CONFIG"} \
    --output_dir "$OUTPUT_DIR" \
    --bf16 true \
    --tune_vision true \
    --num_train_epochs 1 \
    --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 1 \
    --learning_rate 1e-6 \
    --weight_decay 0.1 \
    --adam_beta2 0.95 \
    --warmup_ratio 0.01 \
    --lr_scheduler_type cosine \
    --gradient_checkpointing true \
    --logging_steps 1 \
    --save_strategy steps \
    --save_steps 1000 \
    --save_total_limit 10 \
    --report_to tensorboard \
    "$@"
