"""GPU benchmark: peak memory and tokens/s of training steps on real-size MiniCPM-V
architectures (random weights, no download), through finetune.train as users run it.

    python tools/bench_gpu.py [--versions 2.5 4.5] [--settings lora lora-full-logits ...] [--steps 6]
    python tools/bench_gpu.py --size tiny --versions 2.6 --steps 2      # CPU smoke run (tests)

For each version it builds the real architecture from our own remote code (the LLM sizes of
the published checkpoint, from its registry entry: 2.5 Llama-3 8B, 2.6 Qwen2-7B, 4.0
MiniCPM4-3B, 4.5 Qwen3-8B; all with a SigLIP-400M 27x1152 vision tower) with random bf16
weights, saves it once, and runs every setting in a process of its own: bf16, gradient
checkpointing, sdpa attention, LoRA r=64 on q/k/v/o with the resampler and vision tower
trained (the launchers' defaults). Settings:
  lora               this project: chunked loss over labelled positions; one sample of about
                     --tokens tokens (a 1344x896 image, its slices, a long answer), batch 1
  lora-full-logits   the same with the official finetune's loss: full [tokens x vocab] logits in fp32
  qlora              lora on a 4-bit (NF4) LLM (needs CUDA and bitsandbytes)
  full               every weight trained (no LoRA, no DeepSpeed): fits one GPU for 4.0 only
  lora-padded-mixed  mixed-length samples (about --tokens / 8 to --tokens), batches of 4 padded
                     to their longest, official loss: the official-equivalent way to batch
  lora-packed-mixed  the same samples with --packing (packs of up to 4 x --tokens / 2 tokens,
                     batch 1) and the chunked loss
Prints peak GPU memory and real (non-padding) tokens/s per setting and the ratios against
lora-full-logits (one-sample settings) and lora-padded-mixed (mixed settings), measured in
the same run; --out FILE also writes them as JSON Lines.
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

from minicpmv_ft.versions import VERSIONS  # noqa: E402

SIGLIP_400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
               "image_size": 980, "patch_size": 14, "model_type": "idefics2"}
BENCHMARKED = [name for name, version in VERSIONS.items() if version.published_llm]
LORA = ["--use_lora", "true"]
# setting -> (finetune.py flags, data: "one" long sample or "mixed" lengths, the official loss, baseline)
SETTINGS = {
    "lora": (LORA, "one", False, "lora-full-logits"),
    "lora-full-logits": (LORA, "one", True, None),
    "qlora": (LORA + ["--q_lora", "true"], "one", False, "lora-full-logits"),
    "full": (["--tune_llm", "true"], "one", False, "lora-full-logits"),
    "lora-padded-mixed": (LORA + ["--per_device_train_batch_size", "4"], "mixed", True, None),
    "lora-packed-mixed": (LORA + ["--packing", "true"], "mixed", False, "lora-padded-mixed"),
}
DEFAULT_SETTINGS = ["lora", "lora-full-logits", "qlora", "lora-padded-mixed", "lora-packed-mixed"]


def build_model(version: str, size: str, out: Path) -> Path:
    """A model folder of `version`: the tiny recipe, resized to the real architecture."""
    import make_tiny_model

    if size == "tiny":
        return make_tiny_model.build(version, out)
    import torch
    from transformers import AutoConfig, AutoModel

    real = dict(VERSIONS[version].published_llm)
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


def write_data(model_dir: Path, folder: Path, tokens: int) -> dict:
    """Data files: "one" (64 copies of one sample of about `tokens` tokens) and "mixed" (64 samples
    of about tokens / 8 to tokens); kind -> (path, tokens per sample, labelled tokens per sample)."""
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

    def measure(records):
        data = SupervisedDataset(records, tok, config, model_max_length=1 << 20)
        return [report.tokens for report in data.reports], [int((data[i]["labels"] != -100).sum())
                                                             for i in range(min(len(data), 1))]

    base, per_100 = measure([sample(1)])[0][0], measure([sample(101)])[0][0] - measure([sample(1)])[0][0]

    def words_for(target):
        return max(1, 1 + round((target - base) * 100 / per_100))

    rng = np.random.RandomState(1)
    kinds = {"one": [sample(words_for(tokens))] * 64,
             "mixed": [sample(words_for(int(rng.randint(max(base + 1, tokens // 8), tokens + 1)))) for _ in range(64)]}
    files = {}
    for kind, records in kinds.items():
        path = folder / f"{kind}.json"
        path.write_text(json.dumps(records))
        lengths, labelled = measure(records[:1] if kind == "one" else records)
        files[kind] = (path, lengths, labelled)
    return files


def worker(setting: str, model_dir: str, data: str, steps: int, tokens: int, out: str):
    """One setting, in its own process: finetune.train with a step clock and a token count."""
    import torch
    from transformers import TrainerCallback

    import finetune
    import trainer as trainer_module

    cuda = torch.cuda.is_available()
    flags, kind, official_loss, _ = SETTINGS[setting]

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

    counted = []  # real (non-padding) tokens of each step
    loss = full_logits_loss if official_loss else trainer_module.MiniCPMVTrainer.compute_loss

    def counting_loss(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        counted.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
        return loss(self, model, inputs, *args, **kwargs)

    trainer_module.MiniCPMVTrainer.compute_loss = counting_loss
    clock = StepClock()
    max_length = 2 * tokens if kind == "mixed" else 1 << 20
    argv = ["--model_name_or_path", model_dir, "--data_path", data, "--output_dir", str(Path(out).parent / setting),
            "--max_steps", str(steps), "--per_device_train_batch_size", "1", "--gradient_checkpointing", "true",
            "--learning_rate", "1e-5", "--model_max_length", str(max_length), "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "1000", "--disable_tqdm", "true", "--tune_vision", "true",
            "--lora_r", "64", "--lora_alpha", "64", "--overwrite_output_dir", "true", "--seed", "0"]
    argv += ["--bf16", "true"] if cuda else ["--use_cpu", "true"]
    trained = finetune.train(argv + flags, callbacks=[clock])
    skip = 1 if len(clock.times) > 1 else 0  # the first step includes warm-up
    result = {"setting": setting, "seconds_per_step": sum(clock.times[skip:]) / len(clock.times[skip:]),
              "tokens_per_second": sum(counted[skip:]) / sum(clock.times[skip:]),
              "tokens_per_step": sum(counted[skip:]) / len(counted[skip:]),
              "attention": trained.model.config._attn_implementation,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")


def full_logits_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    """The official finetune's loss: logits for every position, in fp32, then cross-entropy."""
    import torch

    labels = inputs.pop("labels")
    logits = model(data=inputs, attention_mask=self._attention_mask(model, inputs), use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             reduction="sum")
    loss = loss / (num_items_in_batch or max(int((labels[:, 1:] != -100).sum()), 1))
    return (loss, {"loss": loss}) if return_outputs else loss


def run_version(version, args, work: Path, report):
    import torch

    started = time.perf_counter()
    model_dir = build_model(version, args.size, work / f"model-{version}")
    files = write_data(model_dir, work, args.tokens)
    (_, (tokens,), (labelled,)), (_, mixed, _) = files["one"], files["mixed"]
    print(f"MiniCPM-V {version} ({args.size}): built in {time.perf_counter() - started:.0f} s; one sample of {tokens} "
          f"tokens ({labelled} labelled); mixed: {len(mixed)} samples of {min(mixed)}-{max(mixed)} tokens", flush=True)
    results_file = work / f"results-{version}.jsonl"
    for setting in args.settings:
        if setting == "qlora" and not torch.cuda.is_available():
            print(f"  {setting:<17} skipped: needs CUDA", flush=True)
            continue
        done = subprocess.run([sys.executable, __file__, "--worker", setting, "--model", str(model_dir),
                               "--data", str(files[SETTINGS[setting][1]][0]), "--steps", str(args.steps),
                               "--tokens", str(args.tokens), "--results", str(results_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {setting:<17} FAILED (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
    rows = {r["setting"]: r for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.exists() else {}
    for r in rows.values():
        r.update(version=version, size=args.size, tokens=tokens, labelled=labelled)
        line = (f"  {r['setting']:<17} {r['tokens_per_second']:9.0f} tokens/s  {r['seconds_per_step']:7.3f} s/step  "
                f"{r['tokens_per_step']:6.0f} tokens/step  {r['attention']}")
        if r["peak_gib"] is not None:
            line += f"  peak {r['peak_gib']:6.2f} GiB"
        baseline = rows.get(SETTINGS[r["setting"]][3])
        if baseline:
            line += f"   vs {baseline['setting']}: speed x{r['tokens_per_second'] / baseline['tokens_per_second']:.2f}"
            if r["peak_gib"] is not None:
                line += f", memory x{r['peak_gib'] / baseline['peak_gib']:.2f}"
        print(line, flush=True)
        report.append(r)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["2.5", "4.5"], choices=BENCHMARKED)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--size", default="real", choices=["real", "tiny"], help="tiny: CPU smoke run")
    parser.add_argument("--tokens", type=int, default=2048,
                        help="tokens of the one-sample settings' sample; the longest mixed sample")
    parser.add_argument("--steps", type=int, default=6, help="steps per setting (the first is not timed)")
    parser.add_argument("--out", default=None, help="also write the results as JSON Lines")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.data, args.steps, args.tokens, args.results)
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
