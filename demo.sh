#!/usr/bin/env bash
# README command 1. On a fresh machine: sets up .venv, builds a tiny MiniCPM-V 2.6-style
# model, writes and checks the bundled sample data, runs finetune_lora.sh and a short full fine-tune
# (finetune_ds.sh) on CPU, then loads each result, asks it about a sample image and scores it
# on the sample eval set with predict.py.
# DEMO_VERSION=2.0|2.5|2.6|4.0|4.5|4.6 picks the tiny model's version (default 2.6); 4.6 sets up
# and uses its own environment (.venv-4.6 from requirements-4.6.txt, transformers 5.x).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=${DEMO_VERSION:-2.6}
if [ "$VERSION" = "4.6" ]; then
    export VENV=.venv-4.6 REQUIREMENTS=requirements-4.6.txt
fi
source tools/setup_venv.sh
WORK=${WORK:-demo_output}

python tools/make_tiny_model.py --version "$VERSION" --out "$WORK/tiny-$VERSION"
python tools/make_sample_data.py --out "$WORK/data"
python check_data.py --model_name_or_path "$WORK/tiny-$VERSION" --data_path "$WORK/data/train.json" --show 1 --num_workers 2

# CPU settings for the launchers: one process, no DeepSpeed, fp32.
export MODEL="$WORK/tiny-$VERSION" DATA="$WORK/data/train.json" EVAL_DATA="$WORK/data/eval.json"
export DS_CONFIG="" GPUS_PER_NODE=1 OMP_NUM_THREADS=2
# --overwrite_output_dir: each demo run starts over in $WORK (a run never mixes into another one).
CPU_FLAGS=(--use_cpu true --bf16 false --gradient_checkpointing false --per_device_train_batch_size 2
           --logging_steps 10 --eval_steps 40 --save_strategy no --max_slice_nums 2 --disable_tqdm true
           --overwrite_output_dir true)

OUTPUT_DIR="$WORK/lora" sh finetune_lora.sh "${CPU_FLAGS[@]}" --num_train_epochs 25 --learning_rate 1e-2
OUTPUT_DIR="$WORK/full" sh finetune_ds.sh "${CPU_FLAGS[@]}" --num_train_epochs 25 --learning_rate 5e-3

QUESTION="What is in the picture?"
echo "(The tiny model is random: every result learns the answer format, but its weak random vision"
echo " tower lets it mix up some of the six shapes, under LoRA and in the full fine-tune alike.)"
python merge_lora.py --adapter "$WORK/lora" --out "$WORK/lora_merged"
for result in lora lora_merged full; do
    echo "== $result, asked about images/red_circle.png: $QUESTION (trained answer: A red circle.)"
    python chat.py --model "$WORK/$result" --image "$WORK/data/images/red_circle.png" --question "$QUESTION" --max_new_tokens 12
done
for result in lora full; do
    echo "== $result, scored on the sample eval set (its last answers):"
    python predict.py --model "$WORK/$result" --data "$WORK/data/eval.json" --out "$WORK/$result/predictions.jsonl" --max_new_tokens 12
done
