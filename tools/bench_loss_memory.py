"""Benchmark: extra peak memory and time of the LM head + loss, three ways, side by side.

    python tools/bench_loss_memory.py [--tokens 2048] [--hidden 256] [--vocabs 128256 151666 151748]
                                      [--labelled 0.1 0.5] [--chunk 128]

  full-logits      the official finetune: logits for every position, upcast to fp32, cross-entropy
  label-positions  the LM head on labelled positions only (this project before chunking)
  chunked          label positions, --chunk rows of logits at a time, recomputed in backward (trainer.py)

Each (vocabulary, labelled share, way) runs forward and backward in a process of its own on
random hidden states and a real-size vocabulary; the peak resident memory above what the
weights and inputs already take is the extra memory of the head and the loss. The logits'
memory does not depend on the hidden size, so a small --hidden keeps the CPU run short.
Prints each figure and the ratio to full-logits; all three losses agree.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WAYS = ("full-logits", "label-positions", "chunked")
# glibc raises its mmap threshold after large frees (up to 32 MiB), and memory freed below it
# stays in the process: resident memory would then count freed chunks of logits. A fixed
# threshold keeps large blocks mmapped, so the peak resident memory is the peak live memory.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def worker(way: str, vocab: int, tokens: int, hidden_size: int, labelled: float, chunk: int, train_head: bool):
    import torch

    from trainer import chunked_cross_entropy

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(hidden_size, vocab, bias=False).requires_grad_(train_head)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    labels = torch.full((tokens,), -100)
    trained = torch.randperm(tokens)[: max(1, int(labelled * tokens))]
    labels[trained] = torch.randint(0, vocab, (len(trained),))
    positions = labels != -100
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if way == "full-logits":
        loss = torch.nn.functional.cross_entropy(lm_head(hidden).float(), labels, reduction="sum")
    elif way == "label-positions":
        loss = torch.nn.functional.cross_entropy(lm_head(hidden[positions]).float(), labels[positions], reduction="sum")
    else:
        loss = chunked_cross_entropy(lm_head, hidden[positions], labels[positions], chunk)  # project = the head
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"way": way, "extra_peak_mib": (peak - baseline) / 1024, "seconds": seconds,
                      "loss": float(loss)}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="positions in the batch")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (does not change the logits' memory)")
    parser.add_argument("--vocabs", type=int, nargs="+", default=[128256, 151666, 151748],
                        help="vocabulary sizes (2.5: 128256, 2.6: 151666, 4.5: 151748)")
    parser.add_argument("--labelled", type=float, nargs="+", default=[0.1, 0.5], help="shares of labelled positions")
    parser.add_argument("--chunk", type=int, default=64, help="rows of logits per chunk (--loss_chunk_tokens)")
    parser.add_argument("--train_head", action="store_true",
                        help="the LM head's weight gets a gradient too (full fine-tuning); default frozen, as "
                             "with LoRA, so only the logits' memory is compared")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--share", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.vocab, args.tokens, args.hidden, args.share, args.chunk, args.train_head)
    rows = []
    print(f"{args.tokens} positions, hidden {args.hidden}, chunk {args.chunk}, LM head "
          f"{'trained' if args.train_head else 'frozen'}; extra peak memory (MiB) and seconds of LM head + loss, "
          f"forward and backward, CPU")
    for vocab in args.vocabs:
        for share in args.labelled:
            results = {}
            for way in WAYS:
                done = subprocess.run([sys.executable, __file__, "--worker", way, "--vocab", str(vocab), "--share",
                                       str(share), "--tokens", str(args.tokens), "--hidden", str(args.hidden),
                                       "--chunk", str(args.chunk)] + ["--train_head"] * args.train_head,
                                      capture_output=True, text=True, check=True, env=WORKER_ENV)
                results[way] = json.loads(done.stdout.strip().splitlines()[-1])
            full = results["full-logits"]
            line = f"  vocab {vocab:>6}, {share:4.0%} labelled:"
            for way in WAYS:
                r = results[way]
                ratio = r["extra_peak_mib"] / max(full["extra_peak_mib"], 1e-9)
                line += f"  {way} {r['extra_peak_mib']:7.1f} MiB (x{ratio:.3f}) {r['seconds']:5.2f} s;"
                rows.append({"vocab": vocab, "labelled": share, **r, "memory_vs_full": ratio})
            losses = [results[way]["loss"] for way in WAYS]
            print(line + f"  losses agree: {max(losses) - min(losses) <= 1e-3 * abs(losses[0])}", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
