"""Checkpoints whose model classes live inside a newer transformers than the default environment
(requirements.txt, transformers 4.57, which the remote code of 2.0-4.5 needs): each needs the
environment its own requirements file sets up."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import transformers
from packaging.version import Version


@dataclass(frozen=True)
class Environment:
    checkpoints: str
    transformers_at_least: str
    requirements: str
    venv: str

    @property
    def setup_command(self) -> str:
        return f"VENV={self.venv} REQUIREMENTS={self.requirements} bash tools/setup_venv.sh"


# config.json model_type -> the environment its classes need
BY_MODEL_TYPE = {
    "minicpmv4_6": Environment("MiniCPM-V 4.6 (openbmb/MiniCPM-V-4.6, -Thinking)", "5.7", "requirements-4.6.txt",
                               ".venv-4.6"),
}


def in_native_environment() -> bool:
    """Whether this environment is one the native checkpoints' requirements file set up."""
    installed = Version(transformers.__version__)
    return any(installed >= Version(env.transformers_at_least) for env in BY_MODEL_TYPE.values())


class WrongEnvironment(ValueError):
    """The checkpoint needs the other environment; the message says how to set it up."""


def check_environment(path: str):
    """WrongEnvironment when the local checkpoint at `path` needs a newer transformers than this
    one, naming the command that sets its environment up (hub ids are checked once loaded)."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return
    with open(config_file) as handle:
        model_type = json.load(handle).get("model_type")
    needed = BY_MODEL_TYPE.get(model_type)
    if needed and Version(transformers.__version__) < Version(needed.transformers_at_least):
        raise WrongEnvironment(
            f"{path} is {needed.checkpoints} (model_type {model_type}), whose classes ship inside transformers >= "
            f"{needed.transformers_at_least}; this environment has transformers {transformers.__version__}, which "
            f"the 2.0-4.5 checkpoints need. Set its own environment up with `{needed.setup_command}` and run with "
            f"it: `VENV={needed.venv} sh finetune_ds.sh`, or {needed.venv}/bin/python finetune.py ...")
