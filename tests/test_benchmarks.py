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
