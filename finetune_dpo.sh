#!/usr/bin/env bash
# Preference tuning (DPO) on pairs of answers: finetune_ds.sh (edit MODEL, DATA, ... there or set
# them in the environment) with --method dpo; DATA holds pairs (docs/data.md, Preference pairs).
# LORA=true (default): finetune_lora.sh's adapters, and the reference is the same model with them
# switched off. LORA=false: full fine-tuning, which takes the reference log-probs from the data or
# from reference_logps.py, run once before (README, Preference tuning).
set -eu
export OUTPUT_DIR=${OUTPUT_DIR:-output/minicpmv_dpo}
LORA=${LORA:-true}
case "$LORA" in
    true) LAUNCHER=finetune_lora.sh; RATE=5e-6 ;;
    false) LAUNCHER=finetune_ds.sh; RATE=5e-7 ;;   # RLAIF-V's full-parameter rate
    *) echo "finetune: LORA=$LORA: set it to true or false" >&2; exit 1 ;;
esac
# No cd: the launchers take relative paths from the folder this was started from.
exec sh "$(dirname "$0")/$LAUNCHER" \
    --method dpo \
    --dpo_beta 0.1 \
    --learning_rate "$RATE" \
    "$@"
