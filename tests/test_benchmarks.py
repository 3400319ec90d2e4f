"""Smoke runs of the benchmarks in CI-sized settings: they run, and report what they claim."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # each setting is a finetune.train run in a process of its own


def run_tool(tmp_path, tool, *args, timeout=600):
    """Runs tools/TOOL with a temporary folder of its own: it succeeds and leaves nothing there.
    (A short path: multiprocessing's sockets under it must fit the 108 bytes of a socket address.)"""
    scratch = Path(tempfile.mkdtemp(prefix="bench_"))
    try:
        done = subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "TMPDIR": str(scratch)})
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.jsonl"
    done = run_tool(tmp_path, "bench_gpu.py", "--size", "tiny", "--versions", "2.6", "--steps", "2", "--tokens", "700",
                    "--out", str(out), timeout=900)
    rows = {row["setting"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"lora", "lora-full-logits", "lora-padded-mixed", "lora-packed-mixed"}  # qlora needs CUDA
    assert "qlora             skipped: needs CUDA" in done.stdout
    for name in ("lora", "lora-full-logits"):  # one sample per step, no padding
        row = rows[name]
        assert abs(row["tokens"] - 700) <= 35 and 0 < row["labelled"] < row["tokens"]
        assert row["tokens_per_step"] == row["tokens"]
    # four padded samples per step against packs of up to 1400 tokens
    assert rows["lora-padded-mixed"]["tokens_per_step"] <= 4 * 700
    assert 700 < rows["lora-packed-mixed"]["tokens_per_step"] <= 1400
    assert all(row["tokens_per_second"] > 0 and row["peak_gib"] is None and row["attention"] == "sdpa"
               for row in rows.values())
    assert "lora              " in done.stdout and "vs lora-full-logits: speed x" in done.stdout
    assert "vs lora-padded-mixed: speed x" in done.stdout


def test_loss_memory_benchmark_shows_the_chunked_loss_flat_and_small(tmp_path):
    out = tmp_path / "loss.jsonl"
    done = run_tool(tmp_path, "bench_loss_memory.py", "--tokens", "512", "--hidden", "32", "--vocabs", "40000",
                    "--labelled", "0.1", "0.5", "--chunk", "16", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    memory = {(row["way"], row["labelled"]): row["extra_peak_mib"] for row in rows}
    for share in (0.1, 0.5):
        assert memory[("chunked", share)] < 0.25 * memory[("full-logits", share)]
    assert memory[("label-positions", 0.5)] > 2 * memory[("chunked", 0.5)]  # grows with the labelled share
    assert done.stdout.count("losses agree: True") == 2


def test_packing_benchmark_reports_padding_and_speed_of_both(tmp_path):
    out = tmp_path / "packing.jsonl"
    done = run_tool(tmp_path, "bench_packing.py", "--samples", "18", "--model_max_length", "1024", "--out", str(out))
    rows = {row["setting"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["unpacked"]["padding_share"] > 0.05 and rows["packed"]["padding_share"] == 0
    assert 0 <= rows["packed"]["pack_room_unused"] < 0.5
    assert rows["packed"]["steps"] < 18 and rows["unpacked"]["steps"] == 18 // 4 + 1
    assert all(row["tokens_per_second"] > 0 for row in rows.values())
    assert "packed / unpacked tokens/s: x" in done.stdout


def test_data_check_benchmark_times_both_commands(tmp_path):
    out = tmp_path / "check.jsonl"
    done = run_tool(tmp_path, "bench_data_check.py", "--samples", "800", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["samples"], row["way"]) for row in rows] == [
        (200, "finetune.py"), (200, "check_data.py"), (800, "finetune.py"), (800, "check_data.py")]
    assert all(row["seconds"] > 0 and row["peak_mib"] > 0 for row in rows)
    assert [row["kept"] for row in rows if row["way"] == "finetune.py"] == [200, 800]  # every sample passed
    assert "800 samples, check_data.py" in done.stdout


def test_data_path_benchmark_compares_with_the_official_bit_for_bit(tmp_path):
    out = tmp_path / "path.jsonl"
    done = run_tool(tmp_path, "bench_data_path.py", "--samples", "4", "--epochs", "2", "--max_slice_nums", "4",
                    "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["way"] for row in rows[:3]] == ["official", "ours", "ours+cache"]
    assert all(row["same_tensors"] for row in rows) and rows[0]["vs_official"] == 1
    assert rows[2]["samples_per_s"] > rows[2]["first_epoch_samples_per_s"]  # the second epoch reads the cache
    assert [row["workers"] for row in rows[3:]] == sorted({1, 2, len(os.sched_getaffinity(0))})
    assert "same tensors as the official, bit for bit: True" in done.stdout


def test_video_benchmark_counts_tokens_per_minute_and_times_the_data_path(tmp_path):
    out = tmp_path / "video.jsonl"
    done = run_tool(tmp_path, "bench_video.py", "--versions", "2.6", "4.5", "--minutes", "0.5", "5", "--size", "160x90",
                    "--clip_seconds", "2", "--samples", "2", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tokens = {(row["version"], row["minutes"]): row for row in rows if "minutes" in row}
    # 2.6: one frame a second up to 64; 160x90 frames are single views: <image> + 64 + </image> and a newline each
    assert tokens[("2.6", 0.5)]["frames"] == 30 and tokens[("2.6", 0.5)]["tokens"] == 30 * 66 + 29
    assert tokens[("2.6", 5)]["frames"] == 64
    # 4.5, 5 min: 540 frames in 180 groups of 3 -> 180 blocks, a third of the frames-as-images count
    five = tokens[("4.5", 5)]
    assert five["frames"] == 540 and five["tokens"] == 180 * 66 + 179 and five["tokens_as_images"] == 540 * 66 + 539
    assert [row["version"] for row in rows if "samples_per_s" in row] == ["2.6", "4.5"]
    assert all(row["cached_samples_per_s"] > 0 for row in rows if "samples_per_s" in row)
    assert "as 540 independent images" in done.stdout


def test_dpo_benchmark_compares_both_ways_on_the_same_loss(tmp_path):
    out = tmp_path / "dpo.jsonl"
    done = run_tool(tmp_path, "bench_dpo.py", "--size", "tiny", "--pairs", "1", "--answer_words", "40", "--steps", "2",
                    "--max_slice_nums", "1", "--out", str(out))
    rows = {row["way"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["ours"]["loss"] == pytest.approx(rows["peers"]["loss"], rel=1e-4)
    assert 2 * rows["ours"]["vision_input_per_step"] == rows["peers"]["vision_input_per_step"]  # each pair's images once
    assert rows["ours"]["peak_mib"] < rows["peers"]["peak_mib"]
    assert "vision work x0.50; losses agree: True" in done.stdout
