"""Benchmark: memory and time of a training step whose LM head runs on labelled positions only
(what trainer.py does) against one that materialises full [batch x length x vocab] logits.

    python tools/bench_label_logits.py [--llm-type qwen] [--vocab-size 151666] [--steps 3]

Both variants run in their own process, side by side in one invocation, on a tiny model with
the real vocabulary size and a batch of high-resolution image samples (mostly image and
prompt tokens, few answer tokens, as in real data). Prints peak memory above the loaded
model and seconds per step for each, and their ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]


def worker(mode: str, model_dir: str, steps: int):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoTokenizer

    from dataset import SupervisedDataset, data_collator
    from trainer import lm_head_on_positions, shifted_targets

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).train()
    scratch = tempfile.TemporaryDirectory(prefix="bench_label_logits_")  # removed when worker() ends
    folder = Path(scratch.name)
    samples = []
    for i in range(4):
        pixels = (np.random.RandomState(i).rand(1000, 1400, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
        samples.append({"image": str(folder / f"{i}.png"), "conversations": [
            {"role": "user", "content": "<image>\nDescribe the picture in one short sentence."},
            {"role": "assistant", "content": "Coloured noise."}]})
    batch = data_collator([SupervisedDataset(samples, tok, model.config)[i] for i in range(4)])
    labels = batch.pop("labels")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if mode == "label-positions":
            positions, targets = shifted_targets(labels)
            with lm_head_on_positions(model.llm.get_output_embeddings(), positions):
                logits = model(data=batch, attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits[0].float(), targets)
        else:
            logits = model(data=batch, attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "tokens": labels.numel(), "trained": int((labels != -100).sum()),
                      "extra_peak_mib": (peak - baseline) / 1024, "seconds_per_step": min(times),
                      "loss": float(loss)}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from minicpmv_ft.versions import REMOTE_CODE_VERSIONS

    parser.add_argument("--version", default="2.6", choices=REMOTE_CODE_VERSIONS)
    parser.add_argument("--vocab-size", type=int, default=151666, help="embedding rows (real 2.6: 151666)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (the fastest is reported)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.steps)
    import make_tiny_model

    scratch = tempfile.TemporaryDirectory(prefix="bench_label_logits_")  # removed when main() ends
    model_dir = make_tiny_model.build(args.version, Path(scratch.name) / "model", vocab_size=args.vocab_size)
    results = {}
    for mode in ("label-positions", "full-logits"):
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--model", str(model_dir),
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, full = results["label-positions"], results["full-logits"]
    print(f"{args.version}, vocab {args.vocab_size}: batch of 4 image samples, {ours['tokens']} token positions, "
          f"{ours['trained']} trained")
    for r in (ours, full):
        print(f"  {r['mode']:<16} extra peak memory {r['extra_peak_mib']:8.1f} MiB   "
              f"{r['seconds_per_step']:.3f} s/step   loss {r['loss']:.6f}")
    print(f"  full-logits / label-positions: memory x{full['extra_peak_mib'] / max(ours['extra_peak_mib'], 1e-9):.1f}, "
          f"time x{full['seconds_per_step'] / ours['seconds_per_step']:.2f}")


if __name__ == "__main__":
    main()
