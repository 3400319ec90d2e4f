"""Benchmark: padding and training speed of a mixed-length set, unpacked vs --packing, one run.

    python tools/bench_packing.py [--model DIR] [--samples 120] [--batch_size 4]
                                  [--model_max_length 2048] [--out results.jsonl]

The set mixes text-only samples (10-400 words), single images (some sliced) and two- or
three-image samples, written to a temporary folder. Prints, for the unpacked collator
(batches of --batch_size in random order, right-padded to their longest) and for packing
(packs of whole samples up to --model_max_length, laid end to end in one row):
- padding share: padded positions / all positions the model computes;
- pack room unused: 1 - tokens / (packs x model_max_length) (packing only);
- tokens/s: real (non-padding) tokens of one epoch of finetune.py training on CPU / its time.
Default model: a tiny 2.6 built on the fly (tools/make_tiny_model.py).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

WORDS = ("the image shows a small red circle next to blue square on grey ground with some noise and "
         "three green lines across its upper left corner while the lower part stays empty").split()
SIZES = [(320, 240), (640, 480), (1000, 460), (1344, 1344), (800, 600)]


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def mixed_samples(count: int, folder: Path, seed: int = 0) -> list[dict]:
    """Text-only, single-image and multi-image samples in turn, with random text lengths."""
    from PIL import Image

    rng = random.Random(seed)
    images = []
    for k, size in enumerate(SIZES):
        path = folder / f"image_{k}.png"
        Image.effect_noise(size, 60 + 10 * k).convert("RGB").save(path)
        images.append(str(path))
    records = []
    for i in range(count):
        answer = {"role": "assistant", "content": text(rng, 5, 120)}
        if i % 3 == 0:
            records.append({"conversations": [{"role": "user", "content": text(rng, 10, 280)}, answer]})
        elif i % 3 == 1:
            records.append({"image": rng.choice(images),
                            "conversations": [{"role": "user", "content": "<image>\n" + text(rng, 3, 60)}, answer]})
        else:
            chosen = rng.sample(images, rng.randint(2, 3))
            markers = {f"<image_{k:02d}>": path for k, path in enumerate(chosen)}
            records.append({"image": markers, "conversations": [
                {"role": "user", "content": "".join(markers) + "\n" + text(rng, 3, 40)}, answer]})
    return records


def train_epoch(model: str, data: Path, out: Path, batch_size: int, max_length: int, packing: bool) -> dict:
    """One epoch of finetune.py training (full, CPU); its runtime and steps."""
    import finetune

    args = ["--model_name_or_path", model, "--data_path", str(data), "--output_dir", str(out), "--use_cpu", "true",
            "--report_to", "none", "--save_strategy", "no", "--num_train_epochs", "1", "--learning_rate", "1e-4",
            "--per_device_train_batch_size", str(batch_size), "--model_max_length", str(max_length),
            "--max_slice_nums", "4", "--disable_tqdm", "true", "--seed", "0", "--logging_steps", "1000",
            "--packing", str(packing).lower()]
    trainer = finetune.train(args)
    return {"seconds": trainer.state.log_history[-1]["train_runtime"], "steps": trainer.state.global_step}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: a tiny 2.6 built here)")
    parser.add_argument("--samples", type=int, default=120, help="samples in the mixed set")
    parser.add_argument("--batch_size", type=int, default=4, help="samples per unpacked micro-batch")
    parser.add_argument("--model_max_length", type=int, default=2048, help="tokens per pack")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    args = parser.parse_args(argv)

    from transformers import AutoConfig, AutoTokenizer

    from dataset import SupervisedDataset
    from minicpmv_ft.packing import PackedDataset, padding_share

    scratch = tempfile.TemporaryDirectory(prefix="bench_packing_")  # removed when main() ends, however it ends
    work = Path(scratch.name)
    model = args.model
    if model is None:
        import make_tiny_model

        model = str(make_tiny_model.build("2.6", work / "model"))
    data = work / "mixed.json"
    data.write_text(json.dumps(mixed_samples(args.samples, work)))
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    dataset = SupervisedDataset(str(data), tokenizer, config, max_slice_nums=4, model_max_length=args.model_max_length)
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)  # the Trainer's random sampler
    lengths = [dataset.lengths[i] for i in order]
    packs = PackedDataset(dataset, args.model_max_length)
    print(f"{len(dataset)} samples (text-only, 1 image, 2-3 images), {sum(lengths)} tokens, "
          f"{min(lengths)}-{max(lengths)} per sample; model {model}")
    rows = []
    for packing in (False, True):
        timing = train_epoch(model, data, work / f"out_{packing}", 1 if packing else args.batch_size,
                             args.model_max_length, packing)
        row = {"setting": "packed" if packing else "unpacked",
               "padding_share": 0.0 if packing else padding_share(lengths, args.batch_size),
               "pack_room_unused": 1 - packs.fill if packing else None,
               "tokens_per_second": sum(lengths) / timing["seconds"], **timing}
        rows.append(row)
        unused = f", pack room unused {row['pack_room_unused']:.1%} ({len(packs)} packs)" if packing else ""
        print(f"  {row['setting']:>8}: padding share {row['padding_share']:.1%}{unused}, {row['steps']} steps, "
              f"{row['tokens_per_second']:.0f} tokens/s", flush=True)
    print(f"  packed / unpacked tokens/s: x{rows[1]['tokens_per_second'] / rows[0]['tokens_per_second']:.2f}")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
