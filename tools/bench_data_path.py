"""Benchmark: samples/s of the data path (image files + conversation -> model tensors), against
the official finetune's preprocessing, side by side in one run.

    python tools/bench_data_path.py [--samples 24] [--epochs 3] [--model DIR] [--max_slice_nums 9]

The set: one JPEG per sample, in turn 1344x1344, 4000x3000, 1920x1080 and 800x600 (smooth
shapes, light noise, quality 90), each with a short conversation; default model a tiny 2.5
(llama3) built on the fly. One process, one core (torch threads 1), --epochs passes:
  official   what the official finetune does per item: open + convert("RGB"), resize the whole
             image to the source view and again to the slice grid, crop the slices, then
             torchvision ToTensor + Normalize per view and the patch-major reshape; the text
             through our encoder (identical ids; well under 1% of the time)
  ours       SupervisedDataset items (this project, no cache)
  ours+cache SupervisedDataset items with --image_cache_dir (a fresh folder: the first epoch
             fills it, later ones read uint8 views instead of decoding and resizing)
Every item's tensors are compared with the official's, bit for bit. Prints samples/s of the
first epoch and of all epochs, and the ratio to the official; then DataLoader samples/s
(batch 1, cache warm) with 1, 2 and all cores' worth of worker processes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
SIZES = [(1344, 1344), (4000, 3000), (1920, 1080), (800, 600)]


def write_images(folder: Path, count: int) -> list[str]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(0)
    paths = []
    for i in range(count):
        size = SIZES[i % len(SIZES)]
        image = Image.linear_gradient("L").resize(size).convert("RGB")
        pen = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.randint(0, size[0]), rng.randint(0, size[1])
            r = rng.randint(size[0] // 20, size[0] // 5)
            pen.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
        noisy = np.asarray(image, dtype=np.int16) + rng.randint(-8, 9, (size[1], size[0], 3))
        path = folder / f"image_{i}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def official_item(dataset, i):
    """The official preprocessing's pixel work for sample i (see the module doc)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from minicpmv_ft.slicing import plan_slices, reshape_by_patch

    sample = dataset.sample(i)
    settings = dataset.settings
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    pixel_values, tgt_sizes, sizes = [], [], []
    for path in sample.image_paths:
        image = Image.open(path).convert("RGB")
        sizes.append(image.size)
        plan = plan_slices(image.size, settings)
        views = [image.resize(plan.source_size, Image.Resampling.BICUBIC)]
        if plan.grid is not None:
            (cols, rows), (cell_w, cell_h) = plan.grid, plan.cell_size
            refine = image.resize((cell_w * cols, cell_h * rows), Image.Resampling.BICUBIC)
            views += [refine.crop((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h))
                      for r in range(rows) for c in range(cols)]
        for view in views:
            tensor = to_tensor(view)
            tgt_sizes.append((tensor.shape[1] // settings.patch_size, tensor.shape[2] // settings.patch_size))
            pixel_values.append(reshape_by_patch(tensor, settings.patch_size)
                                if settings.pixel_layout == "patch_major" else tensor)
    encoded = dataset.encoder.encode(sample, sizes)
    return {"input_ids": torch.tensor(encoded.input_ids), "pixel_values": pixel_values,
            "tgt_sizes": torch.tensor(tgt_sizes, dtype=torch.int32).reshape(-1, 2)}


def same_tensors(ours: dict, official: dict) -> bool:
    import torch

    return (torch.equal(ours["input_ids"], official["input_ids"]) and torch.equal(ours["tgt_sizes"], official["tgt_sizes"])
            and len(ours["pixel_values"]) == len(official["pixel_values"])
            and all(torch.equal(a, b) for a, b in zip(ours["pixel_values"], official["pixel_values"])))


def timed_epochs(make_item, count: int, epochs: int) -> list[float]:
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for i in range(count):
            make_item(i)
        seconds.append(time.perf_counter() - start)
    return seconds


def loader_rate(dataset, workers: int) -> float:
    from torch.utils.data import DataLoader

    from dataset import data_collator

    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=data_collator,
                        persistent_workers=workers > 0, pin_memory=False)
    for _ in loader:  # workers started, pages cached
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(dataset) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=24, help="samples (one JPEG each)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the set")
    parser.add_argument("--model", default=None, help="model folder (default: a tiny 2.5 built here)")
    parser.add_argument("--max_slice_nums", type=int, default=9, help="slices per image at most")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from dataset import SupervisedDataset

    torch.set_num_threads(1)  # per core
    scratch = tempfile.TemporaryDirectory(prefix="bench_data_path_")  # removed when main() ends, however it ends
    work = Path(scratch.name)
    model = args.model
    if model is None:
        import make_tiny_model

        model = str(make_tiny_model.build("2.5", work / "model"))
    paths = write_images(work, args.samples)
    records = [{"image": path, "conversations": [{"role": "user", "content": "<image>\nWhat is in this picture?"},
                                                 {"role": "assistant", "content": "Coloured discs on a gradient."}]}
               for path in paths]
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    common = {"max_slice_nums": args.max_slice_nums, "model_max_length": 10**6}
    plain = SupervisedDataset(records, tokenizer, config, **common)
    cached = SupervisedDataset(records, tokenizer, config, image_cache_dir=str(work / "cache"), **common)
    views = sum(sum(report.views_per_image) for report in plain.reports)
    print(f"{args.samples} samples, JPEGs {', '.join(f'{w}x{h}' for w, h in SIZES)} in turn, {views} views in all "
          f"(max_slice_nums {args.max_slice_nums}); {args.epochs} epochs, one process, one thread; model {model}")
    same = all(same_tensors(plain[i], official_item(plain, i)) and same_tensors(cached[i], official_item(plain, i))
               for i in range(len(plain)))  # this pass also fills the cache; a fresh one is timed below
    cached = SupervisedDataset(records, tokenizer, config, image_cache_dir=str(work / "cache_timed"), **common)
    ways = {"official": lambda i: official_item(plain, i), "ours": plain.__getitem__, "ours+cache": cached.__getitem__}
    rows = []
    for way, make_item in ways.items():
        seconds = timed_epochs(make_item, len(plain), args.epochs)
        rows.append({"way": way, "first_epoch_samples_per_s": len(plain) / seconds[0],
                     "samples_per_s": len(plain) * args.epochs / sum(seconds)})
    official = rows[0]
    for row in rows:
        row["first_epoch_vs_official"] = row["first_epoch_samples_per_s"] / official["first_epoch_samples_per_s"]
        row["vs_official"] = row["samples_per_s"] / official["samples_per_s"]
        print(f"  {row['way']:<10}: first epoch {row['first_epoch_samples_per_s']:6.2f} samples/s "
              f"(x{row['first_epoch_vs_official']:.2f}); {args.epochs} epochs {row['samples_per_s']:6.2f} samples/s "
              f"(x{row['vs_official']:.2f} the official)", flush=True)
    print(f"  same tensors as the official, bit for bit: {same}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(1)
    for workers in sorted({1, 2, cores}):
        rate = loader_rate(cached, workers)
        rows.append({"way": "dataloader", "workers": workers, "samples_per_s": rate})
        print(f"  DataLoader, {workers} worker processes, cache warm: {rate:6.2f} samples/s", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps({**r, "same_tensors": same}) + "\n" for r in rows))


if __name__ == "__main__":
    main()
