"""Benchmark: peak memory and time of a DPO step, this project's way against the peers', side by side.

    python tools/bench_dpo.py [--version 2.6] [--size tiny|vocab|real] [--pairs 2] [--answer_words 200]
                              [--steps 4] [--max_slice_nums N] [--out FILE]

  ours   dpo_trainer.py: one forward over the chosen and the rejected rows, each pair's images
         through the vision tower once, each answer's log-probability from the chunked LM head
         on its trained positions (never the full logits)
  peers  the way multimodal DPO is commonly computed (TRL's concatenated forward, as
         LLaMA-Factory and ms-swift run it): the same rows in one forward, but every row's images
         through the vision tower, and full [tokens x vocab] logits in fp32, log-softmax and gather

Both take the reference log-probs from the data (computed once before training, as
reference_logps.py does), so the step is the policy's forward and backward only. Each way runs
in a process of its own on the same batch of --pairs pairs about one 1344x896 image (sliced as
the checkpoint slices it), full fine-tuning: the first step warms up, the rest are timed. Sizes:
tiny (the test models), vocab (the tiny model with the checkpoint's real vocabulary: the LM
head's share at its true size, on CPU) and real (the published architecture, random bf16
weights; CUDA, as tools/bench_gpu.py builds it). Peak memory is the GPU's on CUDA, else the
process's resident memory above what it held before the first step. Prints each way's figures,
the ratios ours / peers, what reached the resampler (the vision work), and whether the two losses
agree.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

WAYS = ("ours", "peers")
# as bench_loss_memory.py: large blocks stay mmapped, so resident memory follows live memory
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def build(version: str, size: str, out: Path) -> Path:
    import make_tiny_model
    from bench_gpu import build_model

    from minicpmv_ft.versions import VERSIONS

    if size == "vocab":
        return make_tiny_model.build(version, out, vocab_size=VERSIONS[version].published_llm["vocab_size"])
    return build_model(version, size, out)


def write_pairs(folder: Path, pairs: int, words: int) -> Path:
    """`pairs` pairs about one image, answers of about `words` words, with reference log-probs."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.RandomState(0).rand(896, 1344, 3) * 255).astype("uint8")).save(folder / "image.png")
    records = [{"id": k, "image": str(folder / "image.png"), "question": "Describe the picture in detail.",
                "chosen": " ".join(f"word{(i + k) % 97}" for i in range(words)),
                "rejected": " ".join(f"term{(i + 2 * k) % 89}" for i in range(words)),
                "logps": [-2.0 * words, -2.0, [], -2.5 * words, -2.5, []]} for k in range(pairs)]
    (folder / "pairs.json").write_text(json.dumps(records))
    return folder / "pairs.json"


def peers_loss(trainer, model, inputs):
    """The peers' step loss: full fp32 logits of every row, each side's images through the tower."""
    import torch

    from minicpmv_ft.preference_loss import dpo_losses

    pairs, given, labels = inputs.pop("pairs"), inputs.pop("reference"), inputs.pop("labels")
    family = trainer.version.family
    logits = model(**family.forward_kwargs(inputs, model), attention_mask=inputs["attention_mask"],
                   use_cache=False).logits
    targets = labels[:, 1:]
    trained = targets != -100
    token_logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    logps = (token_logps * trained).sum(-1)
    reference = given.to(logps.device).T.reshape(-1)
    return dpo_losses(logps[:pairs], logps[pairs:], reference[:pairs], reference[pairs:]).losses.mean()


def worker(way: str, model_dir: str, data: str, steps: int, max_slice_nums: int | None):
    import torch

    from dpo_trainer import PreferenceSettings, PreferenceTrainer
    from minicpmv_ft.arguments import TrainingArguments
    from minicpmv_ft.loading import load_model, load_tokenizer_and_version
    from minicpmv_ft.preference_dataset import PreferenceDataset
    from minicpmv_ft.versions import submodule

    cuda = torch.cuda.is_available()
    tokenizer, config, version = load_tokenizer_and_version(model_dir)
    model = load_model(model_dir, version, torch.bfloat16 if cuda else torch.float32)
    dataset = PreferenceDataset(data, tokenizer, config, version=version, max_slice_nums=max_slice_nums)
    batch = dataset.collator([dataset[i] for i in range(len(dataset))])
    args = TrainingArguments(output_dir=str(Path(data).parent / f"out-{way}"), report_to="none", use_cpu=not cuda, bf16=cuda,
                             method="dpo", dataloader_num_workers=0)
    trainer = PreferenceTrainer(model=model, args=args, processing_class=tokenizer, version=version,
                                preference=PreferenceSettings())
    trainer.router_loss = None  # both ways without the MoE's balance term
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vision = []  # what reaches the resampler (merger): each side's images, or each pair's once
    submodule(model, version.resampler_module).register_forward_pre_hook(lambda module, args: vision.append(args[0].numel()))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds, losses = [], []
    for _ in range(steps):
        inputs = trainer._prepare_inputs(dict(batch))
        start = time.perf_counter()
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=None) if way == "ours" \
            else peers_loss(trainer, model, inputs)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"way": way, "peak_mib": (peak - baseline) / 2 ** 20, "step_seconds": sum(seconds[1:]) /
                      max(len(seconds) - 1, 1), "loss": losses[0], "vision_input_per_step": sum(vision) // steps,
                      "tokens": int(batch["attention_mask"].sum()), "device": torch.cuda.get_device_name() if cuda
                      else "cpu"}))


def compare(args, work: Path) -> dict:
    """way -> its worker's figures, each way in a process of its own."""
    model_dir = build(args.version, args.size, work / "model")
    data = write_pairs(work, args.pairs, args.answer_words)
    results = {}
    for way in WAYS:
        done = subprocess.run([sys.executable, __file__, "--worker", way, "--model", str(model_dir), "--data",
                               str(data), "--steps", str(args.steps)]
                              + (["--max_slice_nums", str(args.max_slice_nums)] if args.max_slice_nums else []),
                              capture_output=True, text=True, env=WORKER_ENV)
        if done.returncode:
            raise SystemExit(f"{way} failed:\n{done.stderr[-3000:]}")
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="2.6")
    parser.add_argument("--size", default="tiny", choices=["tiny", "vocab", "real"])
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step")
    parser.add_argument("--answer_words", type=int, default=200, help="words per answer")
    parser.add_argument("--steps", type=int, default=4, help="steps per way (the first is not timed)")
    parser.add_argument("--max_slice_nums", type=int, default=None, help="slices of the image (default: the checkpoint's)")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.data, args.steps, args.max_slice_nums)
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as folder:
        results = compare(args, Path(folder))
    ours, peers = results["ours"], results["peers"]
    print(f"MiniCPM-V {args.version}, size {args.size}, {args.pairs} pairs of {ours['tokens'] // (2 * args.pairs)} "
          f"tokens per side, full fine-tuning, gradient checkpointing, {ours['device']}")
    for way in WAYS:
        r = results[way]
        print(f"  {way:<6} peak {r['peak_mib']:9.1f} MiB  step {r['step_seconds']:7.3f} s  resampler input per step "
              f"{r['vision_input_per_step']}  loss {r['loss']:.6f}")
    memory, time_ratio = ours["peak_mib"] / max(peers["peak_mib"], 1e-9), ours["step_seconds"] / peers["step_seconds"]
    vision = ours["vision_input_per_step"] / max(peers["vision_input_per_step"], 1)
    agree = abs(ours["loss"] - peers["loss"]) <= 1e-3 * max(abs(peers["loss"]), 1e-3)
    print(f"  ours / peers: memory x{memory:.3f}, time x{time_ratio:.3f}, vision work x{vision:.2f}; losses agree: "
          f"{agree}")
    if args.out:
        rows = [{**results[way], "version": args.version, "size": args.size, "pairs": args.pairs} for way in WAYS]
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
