"""Multi-process training on CPU: the loss normalisation across micro-batches, gradient
accumulation and processes; DeepSpeed ZeRO-2 against ZeRO-3 on two processes; kill, signal and
resume. What the processes compute is tested on ranks forked from one process that imported the
training stack once (tests/forked_ranks.py); a signal to two processes goes through torchrun
itself (the launchers' own tests are in test_launchers.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REGISTRY, ROOT, VERSIONS
from minicpmv_ft.checkpoints import resolve_resume
from test_deepspeed_resume import RunsCode

pytestmark = pytest.mark.slow  # several processes each; `bash run_tests.sh -m "not slow"` skips them
PROBE = str(ROOT / "tests" / "finetune_probe.py")


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(out)], check=True)
    samples = json.loads((out / "train.json").read_text())
    (out / "four.json").write_text(json.dumps([samples[0], samples[1], samples[-2], samples[-1]]))
    return out / "four.json"


@pytest.fixture(scope="module")
def four_pairs(four_samples):
    """Four preference pairs beside the sample images, with reference log-probs: three about an
    image, one text-only."""
    pairs = json.loads((four_samples.parent / "pairs.json").read_text())
    text = {"id": "text", "question": "How many sides does a square have?", "chosen": "Four.", "rejected": "Five."}
    chosen = [pairs[0], pairs[1], text, pairs[2]]
    for k, pair in enumerate(chosen):
        # RLAIF-V's six values, the sums a margin away from the policy's
        pair["logps"] = [-60.0 + 3 * k, -1.0, [], -55.0 - 2 * k, -1.0, []]
    (four_samples.parent / "four_pairs.json").write_text(json.dumps(chosen))
    return four_samples.parent / "four_pairs.json"


def run(args, nproc=1, check=True, forked=None):
    """finetune_probe.py on `nproc` processes: under torchrun, or forked by `forked` (a ForkedRanks)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if forked:
        result = forked.run(args, nproc, env)
    else:
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        result = subprocess.run(launcher + [PROBE] + [str(a) for a in args], env=env, capture_output=True, text=True,
                                timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def forked():
    """Ranks forked from one process that imported the training stack (tests/forked_ranks.py)."""
    from forked_ranks import ForkedRanks

    server = ForkedRanks(dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    yield server
    server.close()


def common(model, data, out):
    return ["--probe_out", out / "probe.json", "--model_name_or_path", model, "--data_path", data,
            "--output_dir", out, "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
            "--logging_steps", "1", "--max_slice_nums", "1", "--seed", "0"]


@pytest.mark.parametrize("method,data", [("sft", "four_samples"), ("dpo", "four_pairs")])
def test_loss_and_gradients_independent_of_batch_split(tiny_model_dir, tmp_path, forked, request, method, data):
    """One optimizer step over the same 4 samples (dpo: pairs): 4 x 1, 1 x 4 accumulation, 2
    processes x 2. The loss is the mean over the step's trained tokens (dpo: pairs) on all processes."""
    model = tiny_model_dir("2.6")
    step = ["--method", method, "--max_steps", "1", "--learning_rate", "1e-3", "--max_grad_norm", "0",
            "--save_strategy", "no"]
    layouts = {"4x1": (1, ["--per_device_train_batch_size", "4"]),
               "1x4": (1, ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "4"]),
               "2proc x2": (2, ["--per_device_train_batch_size", "2"])}
    results = {}
    for name, (nproc, flags) in layouts.items():
        out = tmp_path / name.replace(" ", "_")
        run(common(model, request.getfixturevalue(data), out) + step + flags, nproc=nproc, forked=forked)
        probe = json.loads((out / "probe.json").read_text())
        results[name] = (probe, torch.load(str(out / "probe.json") + ".grads.pt"))
    reference_probe, reference_grads = results["4x1"]
    assert reference_probe["world_size"] == 1 and results["2proc x2"][0]["world_size"] == 2
    assert len(reference_grads) >= 4
    if method == "dpo":
        assert abs(reference_probe["losses"][0] - 0.6931) > 0.05  # the data's reference is not the policy
    for name, (probe, grads) in results.items():
        assert probe["losses"][0] == pytest.approx(reference_probe["losses"][0], rel=1e-4), name
        assert grads.keys() == reference_grads.keys(), name
        for key, grad in grads.items():
            # Equal up to float32 summation order: elements near zero differ by ~1e-6 of the tensor's
            # scale, and gradients that are zero in exact arithmetic (attention key biases) are noise.
            scale = float(reference_grads[key].abs().max())
            torch.testing.assert_close(grad, reference_grads[key], rtol=1e-4, atol=1e-5 * scale + 1e-8,
                                       msg=f"{name}: {key}")


LORA = ["--use_lora", "true", "--lora_r", "4"]
# DPO under ZeRO-2 and ZeRO-3 for every version (2.0: ZeRO-2; ZeRO-3 on several processes is
# refused for it): one step of the four pairs, two per process (the text-only pair on one of
# them, so the processes hold different views), the loss equal between them, the reference
# from the data, and with LoRA computed with the adapters switched off (an extra forward,
# gathered under ZeRO-3 too).
DPO_ZERO_CASES = [(v, []) for v in VERSIONS] + [(VERSIONS[-1], LORA + ["--tune_vision", "false",
                                                                       "--dpo_reference", "adapter_off"])]


@pytest.mark.parametrize("version,extra", DPO_ZERO_CASES,
                         ids=[v + ("-lora" if extra else "") for v, extra in DPO_ZERO_CASES])
def test_dpo_under_zero2_and_zero3_on_two_processes_trains_alike(tiny_model_dir, four_pairs, tmp_path, forked,
                                                                 version, extra):
    stages = {"ds_config_zero2.json": 2} if REGISTRY[version].vision_call_per_image else {
        "ds_config_zero2.json": 2, "ds_config_zero3.json": 3}
    losses = {}
    for config, stage in stages.items():
        out = tmp_path / config
        run(common(tiny_model_dir(version), four_pairs, out) + [
            "--method", "dpo", "--deepspeed", ROOT / config, "--max_steps", "1", "--per_device_train_batch_size",
            "2", "--learning_rate", "1e-3", "--save_strategy", "no"] + extra, nproc=2, forked=forked)
        probe = json.loads((out / "probe.json").read_text())
        assert (probe["zero_stage"], probe["world_size"]) == (stage, 2)
        assert len(probe["losses"]) == 1 and all(torch.isfinite(torch.tensor(probe["losses"])))
        losses[config] = probe["losses"]
    if len(losses) == 2:
        assert losses["ds_config_zero3.json"] == pytest.approx(losses["ds_config_zero2.json"], rel=1e-5)


# ZeRO-2 and ZeRO-3 for every version, each step's loss equal between them; 2.0 under ZeRO-3 on
# several processes is refused (finetune.check_version_supported, tested in test_finetune.py):
# it would deadlock. With one sample per process, the four samples (one image, a text-only one,
# two images) put different view counts on the two processes in most steps: 4.6's merger runs
# once per view, and a text-only batch runs the tower on a blank view. ZeRO-3 needs every process
# to gather the same weights in the same order, forward and backward (leaf merger:
# minicpmv_ft/zero3_leaves.py; blank view: MiniCPMVTrainer._blank_view_in_forward); it must
# neither hang nor lose gradients: each step's loss equals ZeRO-2's, which gathers none. LoRA too
# (also PEFT-wrapped, with a frozen vision tower: no input of the merger requires grad).
ZERO_CASES = [(v, []) for v in VERSIONS] + [
    (v, LORA + (["--tune_vision", "false"] if REGISTRY[v].zero3_leaf_modules else []))
    for v in VERSIONS if v == "2.5" or REGISTRY[v].zero3_leaf_modules]


@pytest.mark.parametrize("version,extra", ZERO_CASES, ids=[v + ("-lora" if extra else "") for v, extra in ZERO_CASES])
def test_zero2_and_zero3_on_two_processes_train_alike(tiny_model_dir, four_samples, tmp_path, forked, version, extra):
    import transformers

    entry = REGISTRY[version]
    source = tiny_model_dir(version)
    stages = {"ds_config_zero2.json": 2} if entry.vision_call_per_image else {
        "ds_config_zero2.json": 2, "ds_config_zero3.json": 3}
    losses = {}
    for config, stage in stages.items():
        out = tmp_path / config
        done = run(common(source, four_samples, out) + [
            "--deepspeed", ROOT / config, "--max_steps", "3", "--per_device_train_batch_size", "1",
            "--learning_rate", "1e-3", "--save_strategy", "no"] + extra, nproc=2, forked=forked)
        probe = json.loads((out / "probe.json").read_text())
        assert (probe["engine"], probe["zero_stage"], probe["world_size"]) == ("DeepSpeedEngine", stage, 2)
        # issue 18.8: the data is checked once on the node, not once per process
        assert done.stderr.count("checked by this node's first process") == 1, done.stderr[-3000:]
        assert "shm_comm" not in done.stdout + done.stderr  # DeepSpeed's CPU inference op: not compiled, not loaded
        assert len(probe["losses"]) == 3 and all(torch.isfinite(torch.tensor(probe["losses"])))
        losses[config] = probe["losses"]
    if len(losses) == 2:
        assert losses["ds_config_zero3.json"] == pytest.approx(losses["ds_config_zero2.json"], rel=1e-5)
    out = tmp_path / list(stages)[-1]  # what the last stage saved
    if "--use_lora" in extra:
        saved = load_file(out / "adapter_model.safetensors")
        resampler = {k.removeprefix("base_model.model."): v for k, v in saved.items() if entry.resampler_module + "." in k}
        assert any("lora_A" in k for k in saved) and resampler
        original = load_file(source / "model.safetensors")
        assert any(not torch.equal(v, original[k]) for k, v in resampler.items())  # its gradients were reduced
        return
    auto_class = getattr(transformers, entry.auto_class)
    trained = auto_class.from_pretrained(out, trust_remote_code=True)
    original = auto_class.from_pretrained(source, trust_remote_code=True)
    changed = [n for n, p in trained.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert any(n.startswith(entry.llm_module + ".") for n in changed)
    assert any(n.startswith(entry.resampler_module + ".") for n in changed)


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path, forked):
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(data)], check=True)
    model = tiny_model_dir("2.0")
    flags = ["--max_steps", "6", "--save_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "3e-3"]
    straight = tmp_path / "straight"
    run(common(model, data / "train.json", straight) + flags, forked=forked)
    interrupted = tmp_path / "interrupted"
    killed = run(common(model, data / "train.json", interrupted) + flags + ["--kill_after_save", "4"], check=False,
                 forked=forked)
    assert killed.returncode == -9
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (interrupted / "checkpoint-4" / "checkpoint_complete.json").exists()
    assert not (interrupted / "model.safetensors").exists()
    run(common(model, data / "train.json", interrupted) + flags + ["--resume_from_checkpoint", "last"], forked=forked)
    expected, resumed = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_a_sample_failing_on_one_rank_stops_every_rank_at_one_step_with_a_checkpoint(tiny_model_dir, tmp_path, forked):
    """Issue 29.6 on two processes: the rank whose sample fails and the other agree before the
    step, save one complete ZeRO-2 checkpoint together and stop with the sample's line."""
    from conftest import make_image

    samples = []
    for k in range(8):
        make_image(tmp_path / f"{k}.png", (300, 300), seed=k)
        samples.append({"id": f"s{k}", "image": f"{k}.png", "conversations": [
            {"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": f"Shape {k}."}]})
    whole = bytearray((tmp_path / "5.png").read_bytes())
    whole[2000:2400] = bytes(400)  # inside the pixel data: the default check passes it
    (tmp_path / "5.png").write_bytes(bytes(whole))
    (tmp_path / "d.json").write_text(json.dumps(samples))
    flags = ["--max_steps", "4", "--save_strategy", "no", "--per_device_train_batch_size", "1", "--learning_rate",
             "1e-3", "--dataloader_num_workers", "0", "--deepspeed", ROOT / "ds_config_zero2.json"]
    stopped = run(common(tiny_model_dir("2.6"), tmp_path / "d.json", tmp_path / "out") + flags, nproc=2, check=False,
                  forked=forked)
    assert stopped.returncode != 0
    line = next(line for line in stopped.stderr.splitlines() if "training stopped there, checkpoint-" in line)
    assert "sample 5 (id 's5'): cannot read image" in line
    assert "processes: 2 (2 per node, 1 node), DeepSpeed ZeRO-2, fp32 on CPUs" in stopped.stderr  # issue 29: said once
    step = int(line.split("checkpoint-")[1].split(" ")[0])
    assert [p.name for p in (tmp_path / "out").glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert (tmp_path / "out" / f"checkpoint-{step}" / "checkpoint_complete.json").exists()


# Two processes run under DeepSpeed: transformers' plain-DDP resume maps the optimizer state to
# args.device, which on CPU is "cpu:N", a location torch.load cannot restore (GPUs are unaffected).
@pytest.mark.parametrize("nproc,extra", [(1, []), (2, ["--deepspeed", ROOT / "ds_config_zero2.json"])],
                         ids=["1proc", "2proc-zero2"])
def test_sigterm_saves_a_complete_checkpoint_and_partial_ones_are_never_resumed(tiny_model_dir, four_samples,
                                                                                 tmp_path, forked, nproc, extra):
    model = tiny_model_dir("2.6")
    flags = ["--max_steps", "8", "--save_steps", "2", "--per_device_train_batch_size", "1",
             "--learning_rate", "1e-3"] + extra
    # the signal to two processes goes through torchrun itself, which reports it as 1; the resumes
    # that follow are what the processes compute
    stopped = run(common(model, four_samples, tmp_path) + flags + ["--signal_at_step", "3"], nproc=nproc, check=False,
                  forked=forked if nproc == 1 else None)
    assert stopped.returncode == (143 if nproc == 1 else 1), stopped.stderr[-3000:]  # torchrun reports 1
    assert json.loads((tmp_path / "probe.json").read_text())["interrupted_by"] == 15
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert all((tmp_path / c / "checkpoint_complete.json").exists() for c in ("checkpoint-2", "checkpoint-3"))
    assert not (tmp_path / "model.safetensors").exists()  # an interrupted run is not a finished model
    partial = tmp_path / "checkpoint-6"  # as if a later save had been cut off mid-write
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ValueError, match=r"checkpoint-6: incomplete \(no checkpoint_complete.json.*use .*checkpoint-3 or .last."):
        resolve_resume(str(partial), str(tmp_path))
    if extra:  # under DeepSpeed: a crafted newer checkpoint is refused before DeepSpeed unpickles it
        crafted = tmp_path / "checkpoint-5"
        shutil.copytree(tmp_path / "checkpoint-3", crafted)
        state = crafted / "global_step3" / "mp_rank_00_model_states.pt"
        torch.save(dict(torch.load(state, weights_only=True), hook=RunsCode(tmp_path / "ran")), state)
        # a changed file no longer has the size its marker records (passed over, issue 29.7); one
        # crafted with the marker to match is refused by the check of what DeepSpeed unpickles
        marker = json.loads((crafted / "checkpoint_complete.json").read_text())
        marker["files"]["global_step3/mp_rank_00_model_states.pt"] = state.stat().st_size
        (crafted / "checkpoint_complete.json").write_text(json.dumps(marker))
        refused = run(common(model, four_samples, tmp_path) + flags + ["--resume_from_checkpoint", "last"],
                      nproc=nproc, check=False, forked=forked)
        assert refused.returncode != 0 and "refusing to resume" in refused.stderr, refused.stderr[-3000:]
        assert not (tmp_path / "ran").exists()
        shutil.rmtree(crafted)
    resumed = run(common(model, four_samples, tmp_path) + flags + ["--resume_from_checkpoint", "last"], nproc=nproc,
                  forked=forked)
    assert "skipping" in resumed.stderr and "checkpoint-6: incomplete" in resumed.stderr
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert [e["step"] for e in state["log_history"] if "loss" in e][:4] == [1, 2, 3, 4]

