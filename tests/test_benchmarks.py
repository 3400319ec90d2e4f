"""Smoke runs of the benchmarks in CI-sized settings: they run, and report what they claim."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # each setting is a finetune.train run in a process of its own


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--size", "tiny", "--versions", "2.6",
                           "--steps", "2", "--tokens", "700", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["setting"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"lora", "lora-full-logits"}  # qlora needs CUDA
    assert "qlora             skipped: needs CUDA" in done.stdout
    for row in rows.values():
        assert abs(row["tokens"] - 700) <= 35 and 0 < row["labelled"] < row["tokens"]
        assert row["tokens_per_second"] > 0 and row["peak_gib"] is None
    assert "lora-full-logits: speed x" in done.stdout


def test_loss_memory_benchmark_shows_the_chunked_loss_flat_and_small(tmp_path):
    out = tmp_path / "loss.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_loss_memory.py"), "--tokens", "512",
                           "--hidden", "32", "--vocabs", "40000", "--labelled", "0.1", "0.5", "--chunk", "16",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    memory = {(row["way"], row["labelled"]): row["extra_peak_mib"] for row in rows}
    for share in (0.1, 0.5):
        assert memory[("chunked", share)] < 0.25 * memory[("full-logits", share)]
    assert memory[("label-positions", 0.5)] > 2 * memory[("chunked", 0.5)]  # grows with the labelled share
    assert done.stdout.count("losses agree: True") == 2


def test_packing_benchmark_reports_padding_and_speed_of_both(tmp_path):
    out = tmp_path / "packing.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_packing.py"), "--samples", "18",
                           "--model_max_length", "1024", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["setting"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["unpacked"]["padding_share"] > 0.05 and rows["packed"]["padding_share"] == 0
    assert 0 <= rows["packed"]["pack_room_unused"] < 0.5
    assert rows["packed"]["steps"] < 18 and rows["unpacked"]["steps"] == 18 // 4 + 1
    assert all(row["tokens_per_second"] > 0 for row in rows.values())
    assert "packed / unpacked tokens/s: x" in done.stdout
