"""finetune_ds.sh / finetune_lora.sh as users run them: `sh` (POSIX), settings from the environment."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # launches torchrun


def launch(script, env, *flags):
    # the launchers call `python` and `torchrun` from PATH: those of this interpreter
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    full_env = dict(os.environ, PATH=path, GPUS_PER_NODE="1", DS_CONFIG="", OMP_NUM_THREADS="1", **env)
    return subprocess.run(["sh", str(ROOT / script), *flags], env=full_env, capture_output=True, text=True,
                          timeout=600)


def test_missing_data_fails_before_launch(tmp_path):
    result = launch("finetune_ds.sh", {"DATA": str(tmp_path / "none.json")})
    assert result.returncode == 1
    assert f"finetune: DATA={tmp_path / 'none.json'} does not exist" in result.stderr


def test_lora_launcher_trains_and_saves_adapter(tiny_model_dir, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(tmp_path / "data")], check=True)
    env = {"MODEL": str(tiny_model_dir("2.6")), "DATA": str(tmp_path / "data" / "train.json"),
           "EVAL_DATA": str(tmp_path / "data" / "eval.json"), "OUTPUT_DIR": str(tmp_path / "out"),
           "MASTER_PORT": "29517"}
    result = launch("finetune_lora.sh", env, "--use_cpu", "true", "--bf16", "false", "--max_steps", "2",
                    "--eval_steps", "2", "--gradient_checkpointing", "true", "--disable_tqdm", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and adapter["peft_type"] == "LORA"
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("eval_loss" in entry for entry in state["log_history"])
