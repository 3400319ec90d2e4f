"""GPU benchmark: peak memory and tokens/s of training steps on real-size MiniCPM-V
architectures (random weights, no download), through finetune.train as users run it.

    python tools/bench_gpu.py [--versions 2.5 4.5] [--settings lora lora-full-logits qlora] [--steps 6]
    python tools/bench_gpu.py --size tiny --versions 2.6 --steps 2      # CPU smoke run (tests)

For each version it builds the real architecture from our own remote code (2.5: Llama-3 8B +
SigLIP-400M 27x1152 + 96-query resampler; 2.6: Qwen2-7B; 4.0: MiniCPM4-3B; 4.5: Qwen3-8B, all
with the 2.5-style SigLIP) with random bf16 weights, saves it once, and runs every setting in a
process of its own on one sample of about --tokens tokens (one 1344x896 image, its slices and
a long answer): bf16, gradient checkpointing, batch 1, LoRA r=64 on q/k/v/o with the resampler
and vision tower trained (the launchers' defaults). Settings:
  lora              this project: the LM head runs on labelled positions only
  lora-full-logits  the official-equivalent loss: full [tokens x vocab] logits in fp32
  qlora             lora on a 4-bit (NF4) LLM (needs CUDA and bitsandbytes)
Prints peak GPU memory and tokens/s per setting and each ratio against lora-full-logits,
measured in the same run; --out FILE also writes them as JSON Lines.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

SIGLIP_400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
               "image_size": 980, "patch_size": 14, "model_type": "idefics2"}
# The LLM of each checkpoint generation, from its published config.json.
REAL_LLM = {
    "2.5": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8},
    "2.6": {"vocab_size": 151666, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4},
    "4.0": {"vocab_size": 73448, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 2},
    "4.5": {"vocab_size": 151748, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
}
SETTINGS = {
    "lora": ["--use_lora", "true"],
    "lora-full-logits": ["--use_lora", "true"],
    "qlora": ["--use_lora", "true", "--q_lora", "true"],
}
BASELINE = "lora-full-logits"


def build_model(version: str, size: str, out: Path) -> Path:
    """A model folder of `version`: the tiny recipe, resized to the real architecture."""
    import make_tiny_model

    if size == "tiny":
        return make_tiny_model.build(version, out)
    import torch
    from transformers import AutoConfig, AutoModel

    real = REAL_LLM[version]
    make_tiny_model.build(version, out, vocab_size=real["vocab_size"])
    config = json.loads((out / "config.json").read_text())
    config.update(real, vision_config=SIGLIP_400M, torch_dtype="bfloat16")
    config.pop("layer_types", None)  # per-layer list of the tiny LLM; the config rebuilds it for the real depth
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(out, trust_remote_code=True),
                                      trust_remote_code=True, torch_dtype=torch.bfloat16)
    (out / "model.safetensors").unlink()  # the tiny weights; the real ones are saved in shards
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_sample(model_dir: Path, folder: Path, tokens: int) -> tuple[Path, int, int]:
    """A one-sample data file of about `tokens` tokens: (path, tokens, labelled tokens)."""
    import numpy as np
    from PIL import Image
    from transformers import AutoConfig, AutoTokenizer

    from dataset import SupervisedDataset

    Image.fromarray((np.random.RandomState(0).rand(896, 1344, 3) * 255).astype("uint8")).save(folder / "image.png")
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)

    def sample(words):
        answer = " ".join(f"word{i % 97}" for i in range(words))
        return {"image": str(folder / "image.png"), "conversations": [
            {"role": "user", "content": "<image>\nDescribe the picture in detail."},
            {"role": "assistant", "content": answer}]}

    def measure(words):
        item = SupervisedDataset([sample(words)], tok, config, model_max_length=1 << 20)[0]
        return len(item["input_ids"]), int((item["labels"] != -100).sum())

    base, per_100 = measure(1)[0], measure(101)[0] - measure(1)[0]
    words = max(1, 1 + round((tokens - base) * 100 / per_100))
    path = folder / "data.json"
    path.write_text(json.dumps([sample(words)] * 64))
    return (path, *measure(words))


def worker(setting: str, model_dir: str, data: str, steps: int, out: str):
    """One setting, in its own process: finetune.train with a step clock."""
    import torch
    from transformers import TrainerCallback

    import finetune
    import trainer as trainer_module

    cuda = torch.cuda.is_available()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    if setting == BASELINE:
        trainer_module.MiniCPMVTrainer.compute_loss = full_logits_loss
    clock = StepClock()
    argv = ["--model_name_or_path", model_dir, "--data_path", data, "--output_dir", str(Path(out).parent / setting),
            "--max_steps", str(steps), "--per_device_train_batch_size", "1", "--gradient_checkpointing", "true",
            "--learning_rate", "1e-5", "--model_max_length", "1048576", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "1000", "--disable_tqdm", "true", "--tune_vision", "true",
            "--lora_r", "64", "--lora_alpha", "64", "--overwrite_output_dir", "true", "--seed", "0"]
    argv += ["--bf16", "true"] if cuda else ["--use_cpu", "true"]
    finetune.train(argv + SETTINGS[setting], callbacks=[clock])
    timed = clock.times[1:] or clock.times  # the first step includes warm-up
    result = {"setting": setting, "seconds_per_step": sum(timed) / len(timed),
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")


def full_logits_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    """The official finetune's loss: logits for every position, in fp32, then cross-entropy."""
    import torch

    labels = inputs.pop("labels")
    logits = model(data=inputs, attention_mask=inputs["attention_mask"], use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             reduction="sum")
    loss = loss / (num_items_in_batch or max(int((labels[:, 1:] != -100).sum()), 1))
    return (loss, {"loss": loss}) if return_outputs else loss


def run_version(version, args, work: Path, report):
    import torch

    started = time.perf_counter()
    model_dir = build_model(version, args.size, work / f"model-{version}")
    data, tokens, labelled = write_sample(model_dir, work, args.tokens)
    print(f"MiniCPM-V {version} ({args.size}): built in {time.perf_counter() - started:.0f} s; sample of {tokens} "
          f"tokens, {labelled} labelled", flush=True)
    results_file = work / f"results-{version}.jsonl"
    for setting in args.settings:
        if setting == "qlora" and not torch.cuda.is_available():
            print(f"  {setting:<17} skipped: needs CUDA", flush=True)
            continue
        done = subprocess.run([sys.executable, __file__, "--worker", setting, "--model", str(model_dir),
                               "--data", str(data), "--steps", str(args.steps), "--results", str(results_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {setting:<17} FAILED (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
    rows = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    baseline = next((r for r in rows if r["setting"] == BASELINE), None)
    for r in rows:
        r.update(version=version, size=args.size, tokens=tokens, labelled=labelled,
                 tokens_per_second=tokens / r["seconds_per_step"])
        line = f"  {r['setting']:<17} {r['tokens_per_second']:9.0f} tokens/s  {r['seconds_per_step']:7.3f} s/step"
        if r["peak_gib"] is not None:
            line += f"  peak {r['peak_gib']:6.2f} GiB"
        if baseline and r is not baseline:
            line += f"   vs {BASELINE}: speed x{baseline['seconds_per_step'] / r['seconds_per_step']:.2f}"
            if r["peak_gib"] is not None:
                line += f", memory x{r['peak_gib'] / baseline['peak_gib']:.2f}"
        print(line, flush=True)
        report.append(r)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["2.5", "4.5"], choices=list(REAL_LLM))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--size", default="real", choices=["real", "tiny"], help="tiny: CPU smoke run")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of the training sample")
    parser.add_argument("--steps", type=int, default=6, help="steps per setting (the first is not timed)")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.data, args.steps, args.results)
    import torch

    if args.size == "real" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: real-size models need a CUDA GPU; use --size tiny for a CPU smoke run")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    report = []
    for version in args.versions:
        with tempfile.TemporaryDirectory() as work:
            run_version(version, args, Path(work), report)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in report))


if __name__ == "__main__":
    main()
