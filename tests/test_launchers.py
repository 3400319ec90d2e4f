"""finetune_ds.sh / finetune_lora.sh as users run them: `sh` (POSIX), settings from the environment."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import ROOT, VERSIONS

pytestmark = pytest.mark.slow  # launches torchrun


def launch(script, env, *flags):
    """The launcher's run with `env` (a variable set to None: unset, the launcher's default)."""
    # the launchers call `python` and `torchrun` from PATH: those of this interpreter
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    full_env = {**os.environ, "PATH": path, "GPUS_PER_NODE": "1", "DS_CONFIG": "", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["sh", str(ROOT / script), *flags], env={k: v for k, v in full_env.items() if v is not None},
                          capture_output=True, text=True, timeout=600)


def test_missing_data_fails_before_launch(tmp_path):
    result = launch("finetune_ds.sh", {"DATA": str(tmp_path / "none.json")})
    assert result.returncode == 1
    assert f"finetune: DATA={tmp_path / 'none.json'} does not exist" in result.stderr


def test_venv_given_as_an_absolute_path_is_used_and_a_missing_one_refused(tmp_path):
    """Issue 18.18: VENV=/abs/path became $PWD//abs/path and fell back to the system python."""
    missing = launch("finetune_ds.sh", {"VENV": str(tmp_path / "none"), "DATA": str(tmp_path / "none.json")})
    assert missing.returncode == 1 and missing.stderr.startswith(f"finetune: VENV={tmp_path / 'none'} has no bin/python")
    real = launch("finetune_ds.sh", {"VENV": sys.prefix, "DATA": str(tmp_path / "none.json")})
    assert real.returncode == 1 and "DATA=" in real.stderr and "VENV" not in real.stderr


@pytest.mark.parametrize("model_type,venv", [("minicpmv4_6", ".venv-transformers5"), ("minicpmv", ".venv")])
def test_the_environment_is_the_one_the_model_needs(tmp_path, model_type, venv):
    """Without VENV the launcher runs the python of the environment the table
    (minicpmv_ft/versions/environments.py) gives MODEL's model_type: here a stand-in python in a
    copy of the launcher's folder, which prints what it was asked to run."""
    repo = tmp_path / "repo"
    (repo / "minicpmv_ft" / "versions").mkdir(parents=True)
    shutil.copy(ROOT / "finetune_ds.sh", repo)
    shutil.copy(ROOT / "minicpmv_ft" / "versions" / "environments.py", repo / "minicpmv_ft" / "versions")
    for name in (".venv", ".venv-transformers5"):
        (repo / name / "bin").mkdir(parents=True)
        (repo / name / "bin" / "python").write_text(f'#!/bin/sh\necho "{name} python $*"\n')
        (repo / name / "bin" / "python").chmod(0o755)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": model_type}))
    (tmp_path / "train.json").write_text("[]")
    env = {**os.environ, "GPUS_PER_NODE": "1", "OMP_NUM_THREADS": "1", "MODEL": str(tmp_path / "model"),
           "DATA": str(tmp_path / "train.json")}
    env.pop("VENV", None)
    done = subprocess.run(["sh", str(repo / "finetune_ds.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{venv} python -m minicpmv_ft.launch --nproc_per_node 1")


def test_relative_paths_are_taken_from_the_callers_folder(tiny_model_dir, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(tmp_path / "data")],
                   check=True)
    shutil.copytree(tiny_model_dir("2.6"), tmp_path / "model")
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    env = {**os.environ, "PATH": path, "GPUS_PER_NODE": "1", "DS_CONFIG": "", "OMP_NUM_THREADS": "1",
           "MODEL": "model", "DATA": "data/train.json", "OUTPUT_DIR": "out",  # MASTER_PORT unset: a free one
           "PYTHONWARNINGS": "default"}  # run_tests.sh hides FutureWarnings; this run must show none
    result = subprocess.run(["sh", str(ROOT / "finetune_lora.sh"), "--use_cpu", "true", "--bf16", "false",
                             "--max_steps", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert not (ROOT / "out").exists() and not (ROOT / "output" / "minicpmv_lora").exists()
    assert list((tmp_path / "out" / "runs").glob("*/events.out.tfevents.*"))  # TensorBoard by default
    for noise in ("Setting accelerator to CPU", "find_unused_parameters=True", "PAD/BOS/EOS", "FutureWarning"):
        assert noise not in result.stderr + result.stdout, noise


# Lines users learned to ignore (issue 29), each fixed or filtered where it starts (minicpmv_ft/quiet.py)
NOISE = ("Support for Transformers < 5.6 is deprecated", "is not the same type as the class this function is called",
         "vision_config is None", "The image_processor_class argument is deprecated",
         "is deprecated and will be removed in v6", "closing signal SIGTERM", "causal_conv1d", "FutureWarning",
         "Traceback")


@pytest.mark.parametrize("version", VERSIONS)
def test_each_launcher_trains_every_version_with_its_own_defaults(tiny_model_dir, sample_data, tmp_path, version):
    """finetune_ds.sh and finetune_lora.sh as they are (their ZeRO-2 config, bf16, gradient
    checkpointing, the LoRA flags with their dropout, ...): only MODEL, DATA, OUTPUT_DIR and what a
    CPU needs (--use_cpu true: bf16 on the CPU) are set, and one step is asked for. Then chat.py
    on the adapter. Their logs, without the test environment's PYTHONWARNINGS, hold no NOISE."""
    for script, saved in (("finetune_lora.sh", "adapter_config.json"), ("finetune_ds.sh", "model.safetensors")):
        out = tmp_path / script
        env = {"MODEL": str(tiny_model_dir(version)), "DATA": str(sample_data / "train.json"), "OUTPUT_DIR": str(out),
               "DS_CONFIG": None, "PYTHONWARNINGS": None}  # the launcher's own, and what users see
        result = launch(script, env, "--use_cpu", "true", "--max_steps", "1")
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
        assert (out / saved).is_file() and json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
        assert [noise for noise in NOISE if noise in result.stderr + result.stdout] == [], script
    asked = subprocess.run([sys.executable, str(ROOT / "chat.py"), "--model", str(tmp_path / "finetune_lora.sh"),
                            "--image", str(sample_data / "images" / "red_circle.png"), "--question", "What?",
                            "--max_new_tokens", "2"], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert [noise for noise in NOISE if noise in asked.stderr + asked.stdout] == []


@pytest.mark.parametrize("version", [v for v in VERSIONS if v.endswith("-moe")])
def test_lora_on_the_experts_with_the_launchers_dropout_is_refused_before_loading(tiny_model_dir, sample_data,
                                                                                  tmp_path, version):
    """PEFT's LoRA on the fused experts takes no dropout; finetune_lora.sh passes 0.05, which
    stopped the run after the weights loaded (issue 28.4)."""
    from minicpmv_ft.versions import VERSIONS as ENTRIES

    experts = ENTRIES["4.7"].lora_target_regex[:-1] + r"|mlp\.experts)"
    env = {"MODEL": str(tiny_model_dir(version)), "DATA": str(sample_data / "train.json"),
           "OUTPUT_DIR": str(tmp_path / "out")}
    result = launch("finetune_lora.sh", env, "--use_cpu", "true", "--max_steps", "1", "--lora_target_modules", experts)
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "adapts the fused experts" in line)
    assert line.endswith("whose LoRA takes no dropout, and --lora_dropout 0.05 would apply to them too: add "
                         "--lora_dropout 0 (finetune_lora.sh passes 0.05)"), line
    assert "Traceback" not in result.stderr and "trainable parameters" not in result.stderr  # no weights loaded
    result = launch("finetune_lora.sh", env, "--use_cpu", "true", "--max_steps", "1", "--lora_target_modules", experts,
                    "--lora_dropout", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["target_parameters"]


class Launched:
    """finetune_ds.sh started in a session of its own (as a shell job is), its output collected
    as it comes."""

    def __init__(self, env, *flags):
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
        full_env = dict(os.environ, PATH=path, DS_CONFIG="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
        self.proc = subprocess.Popen(["sh", str(ROOT / "finetune_ds.sh"), *flags], env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text, timeout=300):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(self.lines)[-3000:]
            time.sleep(0.2)

    def workers(self):
        return psutil.Process(self.proc.pid).children()

    def finish(self):
        code = self.proc.wait(timeout=300)
        self.reader.join(timeout=30)
        return code, "".join(self.lines)


def stop_by_shell_pid(run):
    run.proc.send_signal(signal.SIGTERM)


def stop_by_ctrl_c(run):
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal sends to its foreground job


def stop_by_scheduler(run):
    """A scheduler (SLURM's scancel) signals every process of the job, workers included."""
    workers = run.workers()
    os.killpg(run.proc.pid, signal.SIGTERM)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("stop, exit_code", [(stop_by_shell_pid, 143), (stop_by_ctrl_c, 130),
                                             (stop_by_scheduler, 143)])
def test_signal_through_launcher_ends_in_a_complete_checkpoint(tiny_model_dir, tmp_path, stop, exit_code):
    """Two processes under finetune_ds.sh: one signal, wherever it is sent, ends the run after the
    current step with one complete checkpoint, exit 128+signal, no worker left behind."""
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(tmp_path / "data")],
                   check=True)
    out = tmp_path / "out"
    run = Launched({"MODEL": str(tiny_model_dir("2.6")), "DATA": str(tmp_path / "data" / "train.json"),
                    "OUTPUT_DIR": str(out), "GPUS_PER_NODE": "2"},
                   "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
                   "--max_steps", "100000", "--save_steps", "100000", "--disable_tqdm", "true")
    run.wait_for("'loss'")
    workers = run.workers()
    assert len(workers) == 2
    stop(run)
    code, output = run.finish()
    assert code == exit_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"stopped by {signal.Signals(exit_code - 128).name}" in output
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "checkpoint_complete.json").is_file(), output[-3000:]
    assert (checkpoints[0] / "model.safetensors").is_file()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    signum = exit_code - 128
    # issue 29: each said once (by the first process), not once per process; no torch elastic lines
    assert output.count(f"interrupted by signal {signum}: {checkpoints[0].name} is the last complete") == 1
    assert output.count(f"signal {signum}: saving {checkpoints[0].name} and stopping") == 1
    assert "failed (exitcode:" not in output  # issue 18.9: torchrun's line after a clean stop is dropped
    assert "closing signal" not in output, output[-3000:]


def test_a_data_error_is_one_line_and_exit_2_through_the_launcher(tiny_model_dir, tmp_path):
    bad = [{"id": "lost", "image": "nope.png", "conversations": [{"role": "user", "content": "<image>"},
                                                                 {"role": "assistant", "content": "x"}]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = launch("finetune_ds.sh", {"MODEL": str(tiny_model_dir("2.6")), "DATA": str(tmp_path / "bad.json"),
                                       "OUTPUT_DIR": str(tmp_path / "out"), "GPUS_PER_NODE": "2"},
                                      "--use_cpu", "true", "--bf16", "false")
    assert result.returncode == 2, result.stderr[-3000:]
    line = f"finetune: {tmp_path / 'bad.json'}, sample 0 (id 'lost'): image not found: {tmp_path / 'nope.png'}"
    assert result.stderr.count(line) == 1  # printed by the first process only
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert "failed (exitcode: 2)" not in result.stderr  # issue 29: torchrun's line after ours
    assert "closing signal" not in result.stderr


@pytest.mark.parametrize("nnodes", ["1", "2"])
def test_master_port_auto_is_a_free_port_on_one_node_and_a_taken_port_is_one_line(nnodes):
    """Issue 18.6: demo.sh and the launchers used a fixed port, so a second run on a machine died
    with EADDRINUSE and a traceback."""
    import socket

    from minicpmv_ft.launch import with_master_port

    argv = ["--nnodes", nnodes, "--node_rank", "0", "--master_port", "auto", "finetune.py", "--x", "auto"]
    if nnodes == "2":
        with pytest.raises(SystemExit, match="several nodes need one MASTER_PORT"):
            with_master_port(argv)
        return
    chosen = with_master_port(argv)
    port = int(chosen[5])
    assert chosen[:5] + chosen[6:] == argv[:5] + argv[6:] and port > 0
    with socket.socket() as taken:
        taken.bind(("", port))
        taken.listen()
        with pytest.raises(SystemExit, match=rf"^launch: MASTER_PORT {port} is in use on this machine"):
            with_master_port(chosen)
        assert with_master_port(chosen[:3] + ["1"] + chosen[4:])  # another node does not listen on it


def test_several_nodes_without_master_addr_are_refused_and_a_node_left_alone_stops_in_one_line(tiny_model_dir,
                                                                                             sample_data):
    """Issue 29.8: NNODES=2 without MASTER_ADDR printed nothing, waited over 12 minutes for the
    other node at localhost and ignored SIGTERM and Ctrl-C (torchrun waits inside C++)."""
    env = {"MODEL": str(tiny_model_dir("2.6")), "DATA": str(sample_data / "train.json"), "NNODES": "2",
           "MASTER_ADDR": None}
    refused = launch("finetune_ds.sh", env)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "launch: NNODES=2 needs MASTER_ADDR, the address of node 0 that every node can reach, and the same "
        "MASTER_ADDR, MASTER_PORT and NNODES on every node")
    from minicpmv_ft.launch import free_port

    port = str(free_port())
    alone = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODES_JOIN_TIMEOUT": "2"}
    started = time.monotonic()
    waited = launch("finetune_ds.sh", {**alone, "NODE_RANK": "0"})
    assert waited.returncode == 1 and time.monotonic() - started < 60
    assert waited.stderr.strip().splitlines()[-1].startswith(
        f"launch: the 2 nodes did not all join at 127.0.0.1:{port} (")
    assert "Traceback" not in waited.stderr
    # a signal while waiting (longer now) ends it at once
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    process = subprocess.Popen(["sh", str(ROOT / "finetune_ds.sh")], stderr=subprocess.PIPE, text=True, env={
        k: v for k, v in {**os.environ, "PATH": path, "GPUS_PER_NODE": "1", "DS_CONFIG": "", **alone,
                          "NODES_JOIN_TIMEOUT": "120", "NODE_RANK": "1"}.items() if v is not None})
    time.sleep(8)  # past the launcher's start, into the wait
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 143 and err.strip().splitlines()[-1] == (
        "launch: SIGTERM while waiting for the other nodes; nothing was started")


# ZeRO-3, whose checkpoints hold every rank's shards and whose model is gathered from them to
# save; ZeRO-2's multi-process checkpoints and resumes: test_distributed.py (45 s a run here)
@pytest.mark.parametrize("config", ["ds_config_zero3.json"])
def test_two_nodes_on_one_machine_train_save_one_checkpoint_and_resume(tiny_model_dir, tmp_path, config):
    """Issue 18.8: the multi-node path (NNODES=2, NODE_RANK 0 and 1, loopback MASTER_ADDR), one
    process per node: trains, node 0 alone writes the checkpoint and the model, a resume (two
    launches again) continues from it; each node checks the data once."""
    from minicpmv_ft.launch import free_port

    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(tmp_path / "data")],
                   check=True)
    port = str(free_port("127.0.0.1"))
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    flags = ["--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--disable_tqdm", "true",
             "--per_device_train_batch_size", "1", "--max_slice_nums", "1", "--save_steps", "2", "--logging_steps", "1"]

    def both_nodes(*more):
        nodes = []
        for rank in ("0", "1"):
            env = {**os.environ, "PATH": path, "GPUS_PER_NODE": "1", "NNODES": "2", "NODE_RANK": rank,
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
                   "DS_CONFIG": str(ROOT / config), "MODEL": str(tiny_model_dir("2.6")),
                   "DATA": str(tmp_path / "data" / "train.json"), "OUTPUT_DIR": str(tmp_path / "out")}
            nodes.append(subprocess.Popen(["sh", str(ROOT / "finetune_ds.sh"), *flags, *more], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
        for node, output in zip(nodes, outputs):
            assert node.returncode == 0, output[-4000:]
        return outputs

    first = both_nodes("--max_steps", "2")
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    assert (tmp_path / "out" / "checkpoint-2" / "checkpoint_complete.json").is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert all(output.count("14 samples, 14 kept") == 1 for output in first)  # one check per node
    both_nodes("--max_steps", "3", "--resume_from_checkpoint", "last")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]


def test_dpo_launcher_trains_lora_on_pairs_and_logs_the_preference_metrics_to_tensorboard(tiny_model_dir, tmp_path):
    """finetune_dpo.sh over finetune_lora.sh over finetune_ds.sh, as users run them: the LoRA
    launcher's adapters, EVAL_DATA evaluated, the preference metrics in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(tmp_path / "data")],
                   check=True)
    env = {"MODEL": str(tiny_model_dir("2.6")), "DATA": str(tmp_path / "data" / "pairs.json"),
           "EVAL_DATA": str(tmp_path / "data" / "pairs.json"), "OUTPUT_DIR": str(tmp_path / "out")}
    result = launch("finetune_dpo.sh", env, "--use_cpu", "true", "--bf16", "false", "--max_steps", "2",
                    "--eval_steps", "2", "--per_device_train_batch_size", "2", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference log-probs: computed each step by the model with its adapters switched off" in result.stderr
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and adapter["peft_type"] == "LORA"  # finetune_lora.sh's flags
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][0]["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert any("eval_loss" in entry for entry in state["log_history"])  # EVAL_DATA, every --eval_steps
    events = EventAccumulator(str(next((tmp_path / "out" / "runs").iterdir()))).Reload()
    for tag in ("train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen", "eval/rewards/margins"):
        assert tag in events.Tags()["scalars"], events.Tags()["scalars"]


@pytest.mark.parametrize("lora,expected,absent", [
    ("true", ["--use_lora true", "--method dpo --dpo_beta 0.1 --learning_rate 5e-6"], "--learning_rate 5e-7"),
    ("false", ["--method dpo --dpo_beta 0.1 --learning_rate 5e-7"], "--use_lora"),
])
def test_the_dpo_launcher_runs_lora_or_full_with_the_methods_flags(tmp_path, lora, expected, absent):
    """finetune_dpo.sh over finetune_lora.sh or finetune_ds.sh, with a stand-in python that prints
    what it was asked to run (as test_the_environment_is_the_one_the_model_needs)."""
    repo = tmp_path / "repo"
    (repo / "minicpmv_ft" / "versions").mkdir(parents=True)
    for script in ("finetune_ds.sh", "finetune_lora.sh", "finetune_dpo.sh"):
        shutil.copy(ROOT / script, repo)
    shutil.copy(ROOT / "minicpmv_ft" / "versions" / "environments.py", repo / "minicpmv_ft" / "versions")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text('#!/bin/sh\necho "python $*"\n')
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "minicpmv"}))
    (tmp_path / "pairs.json").write_text("[]")
    env = {**os.environ, "GPUS_PER_NODE": "1", "OMP_NUM_THREADS": "1", "MODEL": str(tmp_path / "model"),
           "DATA": str(tmp_path / "pairs.json"), "LORA": lora}
    env.pop("VENV", None)
    done = subprocess.run(["sh", str(repo / "finetune_dpo.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flags in expected:
        assert flags in done.stdout, done.stdout
    assert absent not in done.stdout and "output/minicpmv_dpo" in done.stdout
    wrong = subprocess.run(["sh", str(repo / "finetune_dpo.sh")], env={**env, "LORA": "yes"}, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 1 and "finetune: LORA=yes: set it to true or false" in wrong.stderr
