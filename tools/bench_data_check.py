"""Benchmark: the data check of a large JSON Lines file, as finetune.py and check_data.py run it.

    python tools/bench_data_check.py [--samples 200000] [--model DIR] [--workers N]

Writes --samples records, half text-only and half with an image of their own (a distinct
path for each: hard links to one 1024x768 JPEG or one 640x480 PNG, so the file system, not
the disk, is measured), and times the check at a quarter of the samples and at all of them:
- finetune.py: the training dataset built as finetune.py builds it (check_workers() processes);
- check_data.py: its main() with its default workers (all cores).
Each runs in a process of its own; prints seconds, samples/s and peak resident memory (the
process and its workers), so that time and memory can be seen to grow linearly.
Default model: a tiny 2.6 built on the fly (the tokenizer and config are all the check loads).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
WAYS = ("finetune.py", "check_data.py")


def write_data(path: Path, count: int, seed: int = 0):
    from PIL import Image

    images = path.parent / "images"
    images.mkdir(exist_ok=True)
    bases = {"jpg": images / "base.jpg", "png": images / "base.png"}
    Image.effect_noise((1024, 768), 50).convert("RGB").save(bases["jpg"], quality=90)
    Image.effect_noise((640, 480), 50).convert("RGB").save(bases["png"])
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(count):
            question = "Describe the picture in detail, please. " * rng.randint(1, 5)
            answer = "It shows noise of many colours. " * rng.randint(1, 8)
            record = {"id": i, "conversations": [{"role": "user", "content": question},
                                                 {"role": "assistant", "content": answer}]}
            if i % 2:
                extension = "jpg" if i % 4 == 1 else "png"
                name = f"images/{i}.{extension}"
                if not (path.parent / name).exists():
                    os.link(bases[extension], path.parent / name)
                record["image"] = name
                record["conversations"][0]["content"] = "<image>\n" + question
            handle.write(json.dumps(record) + "\n")


def worker(way: str, model: str, data: str):
    start = time.perf_counter()
    if way == "finetune.py":
        from transformers import AutoConfig, AutoTokenizer

        import finetune
        from dataset import SupervisedDataset

        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
        workers = finetune.check_workers()
        count = len(SupervisedDataset(data, tokenizer, config, num_workers=workers))
    else:
        import check_data

        workers = os.cpu_count()
        code = check_data.main(["--model_name_or_path", model, "--data_path", data, "--json", os.devnull])
        count = None if code else -1
    seconds = time.perf_counter() - start
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"way": way, "seconds": seconds, "peak_mib": peak_kib / 1024, "workers": workers,
                      "kept": count}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000, help="records in the file")
    parser.add_argument("--model", default=None, help="model folder (default: a tiny 2.6 built here)")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    scratch = tempfile.TemporaryDirectory(prefix="bench_data_check_")  # removed when main() ends, however it ends
    work = Path(scratch.name)
    model = args.model
    if model is None:
        import make_tiny_model

        model = str(make_tiny_model.build("2.6", work / "model"))
    print(f"{os.cpu_count()} cores; half text-only, half one image each (own path); model {model}")
    rows = []
    for count in (args.samples // 4, args.samples):
        data = work / f"data_{count}.jsonl"
        write_data(data, count)
        for way in WAYS:
            done = subprocess.run([sys.executable, __file__, "--worker", way, model, str(data)], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode:
                sys.exit(f"{way} failed:\n{done.stderr[-3000:]}")
            row = {"samples": count, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"  {count:>7} samples, {way:<13} ({row['workers']} processes): {row['seconds']:6.1f} s, "
                  f"{count / row['seconds']:7.0f} samples/s, peak memory {row['peak_mib']:6.0f} MiB", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
