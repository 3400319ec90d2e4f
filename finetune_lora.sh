#!/usr/bin/env bash
# LoRA fine-tuning: finetune_ds.sh (edit MODEL, DATA, ... there or set them in the
# environment) plus the LoRA flags. The LLM gets adapters on its q/k/v/o projections; the
# resampler (and the vision tower, --tune_vision true) is trained fully and saved with them.
set -eu
export OUTPUT_DIR=${OUTPUT_DIR:-output/minicpmv_lora}
# No cd: finetune_ds.sh takes relative paths from the folder this was started from.
exec sh "$(dirname "$0")/finetune_ds.sh" \
    --use_lora true \
    --lora_r 64 \
    --lora_alpha 64 \
    --lora_dropout 0.05 \
    --learning_rate 1e-4 \
    "$@"
