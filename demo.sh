#!/usr/bin/env bash
# README command 1. On a fresh machine: sets up .venv, builds a tiny MiniCPM-V 2.6-style
# model, writes and checks the bundled sample data, runs finetune_lora.sh and a short full fine-tune
# (finetune_ds.sh) on CPU, merges the adapter, then asks each result (adapter, merged, full)
# about each of the six training images with predict.py and prints what they answered.
# DEMO_VERSION picks the tiny model's version (default 2.6; `python tools/make_tiny_model.py --help`
# lists them). A native version sets up and uses its own environment (.venv-transformers5:
# minicpmv_ft/versions/environments.py).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=${DEMO_VERSION:-2.6}
read -r VENV REQUIREMENTS <<< "$(python3 minicpmv_ft/versions/environments.py version "$VERSION")"
export VENV REQUIREMENTS
source tools/setup_venv.sh
WORK=${WORK:-demo_output}

python tools/make_tiny_model.py --version "$VERSION" --out "$WORK/tiny-$VERSION"
python tools/make_sample_data.py --out "$WORK/data"
python check_data.py --model_name_or_path "$WORK/tiny-$VERSION" --data_path "$WORK/data/train.json" --show 1 --num_workers 2 \
    --max_slice_nums 2

# CPU settings for the launchers: one process, no DeepSpeed, fp32.
export MODEL="$WORK/tiny-$VERSION" DATA="$WORK/data/train.json" EVAL_DATA="$WORK/data/eval.json"
export DS_CONFIG="" GPUS_PER_NODE=1 OMP_NUM_THREADS=2
# --overwrite_output_dir: each demo run starts over in $WORK (a run never mixes into another one).
CPU_FLAGS=(--use_cpu true --bf16 false --gradient_checkpointing false --per_device_train_batch_size 2
           --logging_steps 10 --eval_steps 40 --save_strategy no --max_slice_nums 2 --disable_tqdm true
           --overwrite_output_dir true)

# The vision tower learns at a tenth of the rate (--vision_lr): at the full rate the tiny model's
# random tower merges similar colours before the LLM has learned to read them.
OUTPUT_DIR="$WORK/lora" sh finetune_lora.sh "${CPU_FLAGS[@]}" --num_train_epochs 40 --learning_rate 3e-3 \
    --vision_lr 1e-4 --lora_dropout 0
OUTPUT_DIR="$WORK/full" sh finetune_ds.sh "${CPU_FLAGS[@]}" --num_train_epochs 25 --learning_rate 1e-3 --vision_lr 1e-4

QUESTION="What is in the picture?"
python merge_lora.py --adapter "$WORK/lora" --out "$WORK/lora_merged"
echo "== full, asked with chat.py about images/red_circle.png: $QUESTION (trained answer: A red circle.)"
python chat.py --model "$WORK/full" --image "$WORK/data/images/red_circle.png" --question "$QUESTION" --max_new_tokens 12
for result in lora lora_merged full; do
    echo "== $result, asked about each of the six training images (predict.py on $WORK/data/eval.json):"
    python predict.py --model "$WORK/$result" --data "$WORK/data/eval.json" --out "$WORK/$result/predictions.jsonl" \
        --max_new_tokens 12
done
python - "$WORK" <<'SUMMARY'
import json, sys
print("== what each result answers about the six training images:")
for result in ("lora", "lora_merged", "full"):
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/{result}/predictions.jsonl")]
    right = sum(row["exact_match"] for row in rows)
    print(f"{result:12s} {right}/{len(rows)} right: " + " | ".join(
        row["prediction"] + ("" if row["exact_match"] else f" (trained: {row['reference']})") for row in rows))
SUMMARY
