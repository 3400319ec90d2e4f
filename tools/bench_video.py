"""Benchmark: LLM tokens per minute of video, per version and length, and samples/s of the
video data path (decode, sample, slice, normalise).

    python tools/bench_video.py [--versions 2.6 4.0 4.5] [--minutes 0.5 1 5 30] [--size 640x360]
                                [--clip_seconds 20] [--samples 6]

Tokens come from each version's own frame sampling and placeholders (its registry entry's
VideoScheme; the tiny models carry the real special tokens, so the counts are the real ones).
For 4.5 the table also gives the tokens of the same frames fed as independent images (one
64-token block per frame, no temporal grouping: how other tools feed them) and the ratio.
The data path part writes a --clip_seconds clip at 30 fps and times SupervisedDataset items
over two passes, one process, one thread, without and with --image_cache_dir (cache filled
before the timed passes).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]


def write_clip(path: Path, seconds: float, size, fps: int = 30) -> str:
    """Moving colour bars, MPEG-4."""
    import av
    import numpy as np

    width, height = size
    bars = (np.arange(width)[None, :, None] * np.array([1, 2, 3]) % 256).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(int(seconds * fps)):
            frame = np.roll(np.broadcast_to(bars, (height, width, 3)), 4 * k, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def video_tokens(encoder, info) -> tuple[int, int, int]:
    """(frames, placeholder tokens, tokens if every frame were its own image) of a video."""
    from minicpmv_ft.chat_tokens import video_placeholder
    from minicpmv_ft.video import plan_frames

    plan = plan_frames(info, encoder.video)
    tokens = encoder.tokenizer(video_placeholder(info.size, plan, encoder.frame_settings, encoder.placeholder_tokens).text,
                               add_special_tokens=False)["input_ids"]
    ungrouped = plan.__class__(plan.indices, [[-1] for _ in plan.indices])
    singles = encoder.tokenizer(video_placeholder(info.size, ungrouped, encoder.frame_settings,
                                                  encoder.placeholder_tokens).text, add_special_tokens=False)["input_ids"]
    return len(plan.indices), len(tokens), len(singles)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from minicpmv_ft.versions import REMOTE_CODE_VERSIONS, VERSIONS

    with_video = [name for name in REMOTE_CODE_VERSIONS if VERSIONS[name].video is not None]
    parser.add_argument("--versions", nargs="+", default=with_video, choices=with_video)
    parser.add_argument("--minutes", type=float, nargs="+", default=[0.5, 1, 5, 30], help="video lengths")
    parser.add_argument("--size", default="640x360", help="frame size WxH")
    parser.add_argument("--clip_seconds", type=float, default=20, help="length of the clip the data path decodes")
    parser.add_argument("--samples", type=int, default=6, help="samples (all the same clip) in the data path run")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoTokenizer

    import make_tiny_model
    from dataset import SupervisedDataset
    from minicpmv_ft.encoding import SampleEncoder
    from minicpmv_ft.versions import VERSIONS, image_settings
    from minicpmv_ft.video import VideoInfo

    torch.set_num_threads(1)
    size = tuple(int(n) for n in args.size.split("x"))
    scratch = tempfile.TemporaryDirectory(prefix="bench_video_")  # removed when main() ends, however it ends
    work = Path(scratch.name)
    clip = write_clip(work / "clip.mp4", args.clip_seconds, size)
    rows = []
    print(f"frames {size[0]}x{size[1]} at 30 fps; tokens of the video's placeholders (chat template not counted)")
    for name in args.versions:
        version = VERSIONS[name]
        model = make_tiny_model.build(name, work / f"model-{name}")
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
        encoder = SampleEncoder(tokenizer, version, image_settings(config, version))
        scheme = version.video
        print(f"MiniCPM-V {name}: {scheme.sampling} sampling at {scheme.fps} frames/s, at most {scheme.max_frames} "
              f"frames, {scheme.max_slice_nums} slice(s) a frame" + (f", up to {scheme.max_group} frames a group"
                                                                    if scheme.grouped else ""))
        for minutes in args.minutes:
            info = VideoInfo(round(minutes * 60 * 30), 30.0, size)
            frames, tokens, singles = video_tokens(encoder, info)
            row = {"version": name, "minutes": minutes, "frames": frames, "tokens": tokens,
                   "tokens_per_minute": tokens / minutes, "tokens_as_images": singles}
            rows.append(row)
            grouped = f"; as {frames} independent images {singles} (x{singles / tokens:.1f})" \
                if scheme.grouped else ""
            print(f"  {minutes:5g} min: {frames:4d} frames, {tokens:6d} tokens, {tokens / minutes:7.0f} tokens/minute"
                  + grouped, flush=True)
        records = [{"video": clip, "conversations": [{"role": "user", "content": "<video>\nWhat moves?"},
                                                     {"role": "assistant", "content": "Colour bars."}]}] * args.samples
        dataset = SupervisedDataset(records, tokenizer, config, model_max_length=1 << 20)
        start = time.perf_counter()
        for _ in range(2):
            views = sum(len(dataset[i]["pixel_values"]) for i in range(len(dataset)))
        rate = 2 * len(dataset) / (time.perf_counter() - start)
        cached = SupervisedDataset(records, tokenizer, config, model_max_length=1 << 20,
                                   image_cache_dir=str(work / f"cache-{name}"))
        cached[0]  # the clip's frames decoded once and cached; every later item reads them
        start = time.perf_counter()
        for _ in range(2):
            for i in range(len(cached)):
                cached[i]
        cached_rate = 2 * len(cached) / (time.perf_counter() - start)
        rows.append({"version": name, "clip_seconds": args.clip_seconds, "samples_per_s": rate,
                     "cached_samples_per_s": cached_rate, "views": views})
        print(f"  data path, a {args.clip_seconds:g} s clip: {rate:.2f} samples/s ({views // len(dataset)} views a "
              f"sample), {cached_rate:.2f} with --image_cache_dir (x{cached_rate / rate:.1f}), one thread", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
