"""The environments the checkpoints need, one table: the remote code of 2.0-4.5 runs only under
transformers 4.57 (requirements.txt, .venv); the native checkpoints' classes ship inside
transformers 5 (requirements-transformers5.txt, .venv-transformers5).

run_tests.sh, demo.sh and the launchers read this table with whichever python3 the machine has,
before any environment exists, so this file needs only the standard library (transformers is
imported inside the functions that ask it):

    python3 minicpmv_ft/versions/environments.py list             # "VENV REQUIREMENTS" per line, default first
    python3 minicpmv_ft/versions/environments.py version 4.6      # the environment of a version
    python3 minicpmv_ft/versions/environments.py model PATH       # of a checkpoint folder (its config.json); else default
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Environment:
    requirements: str
    venv: str
    # config.json model_type -> the checkpoints it is (for messages); their registry versions
    # (tests/test_versions.py checks both against the registry)
    model_types: dict[str, str]
    versions: tuple[str, ...]

    @property
    def setup_command(self) -> str:
        return f"VENV={self.venv} REQUIREMENTS={self.requirements} bash tools/setup_venv.sh"

    @property
    def transformers_at_least(self) -> str:
        """The lower bound of `transformers>=X,...` in its requirements file (the one source)."""
        with open(os.path.join(ROOT, self.requirements)) as handle:
            line = next(line for line in handle if line.startswith("transformers>="))
        return line.split(">=", 1)[1].split(",")[0].strip()


DEFAULT = Environment("requirements.txt", ".venv", {"minicpmv": "MiniCPM-V 2.0-4.5 (remote code)"},
                      ("2.0", "2.5", "2.6", "4.0", "4.5"))
TRANSFORMERS_5 = Environment("requirements-transformers5.txt", ".venv-transformers5",
                             {"minicpmv4_6": "MiniCPM-V 4.6 (openbmb/MiniCPM-V-4.6, -Thinking)",
                              "minicpmv4_7": "MiniCPM-V 4.7 (openbmb/MiniCPM-V-4.7-1B, -35B-A3B)"}, ("4.6", "4.7"))
ENVIRONMENTS = (DEFAULT, TRANSFORMERS_5)
# config.json model_type -> the environment its classes need, for the native checkpoints
BY_MODEL_TYPE = {model_type: env for env in ENVIRONMENTS[1:] for model_type in env.model_types}


def for_version(name: str) -> Environment:
    return next((env for env in ENVIRONMENTS if name in env.versions), DEFAULT)


def model_type_at(path: str) -> str | None:
    """config.json's model_type of a local checkpoint folder (None: a hub id, or no such file)."""
    try:
        with open(os.path.join(path, "config.json")) as handle:
            return json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):  # not there, or not a JSON object: loading says what is wrong
        return None


def in_native_environment() -> bool:
    """Whether this environment is one the native checkpoints' requirements file set up."""
    import transformers
    from packaging.version import Version

    installed = Version(transformers.__version__)
    return any(installed >= Version(env.transformers_at_least) for env in ENVIRONMENTS[1:])


class WrongEnvironment(ValueError):
    """The checkpoint needs the other environment; the message says how to set it up."""


def check_version_environment(name: str):
    """WrongEnvironment when this environment is not the one registry version `name` runs in
    (tools/make_tiny_model.py, before it makes anything)."""
    import transformers

    needed = for_version(name)
    if (needed is DEFAULT) == in_native_environment():
        raise WrongEnvironment(f"MiniCPM-V {name} runs in {needed.venv} (transformers >= "
                               f"{needed.transformers_at_least}, {needed.requirements}); this python has transformers "
                               f"{transformers.__version__}. Run {needed.venv}/bin/python, set up with "
                               f"`{needed.setup_command}`")


def check_environment(path: str):
    """WrongEnvironment when the local checkpoint at `path` needs a newer transformers than this
    one, naming the command that sets its environment up (hub ids are checked once loaded)."""
    import transformers
    from packaging.version import Version

    model_type = model_type_at(path)
    needed = BY_MODEL_TYPE.get(model_type)
    if needed and Version(transformers.__version__) < Version(needed.transformers_at_least):
        raise WrongEnvironment(
            f"{path} is {needed.model_types[model_type]} (model_type {model_type}), whose classes ship inside "
            f"transformers >= {needed.transformers_at_least}; this environment has transformers "
            f"{transformers.__version__}, which the 2.0-4.5 checkpoints need. Set its own environment up with "
            f"`{needed.setup_command}` and run with it: `VENV={needed.venv} sh finetune_ds.sh`, or "
            f"{needed.venv}/bin/python finetune.py ...")


def main(argv: list[str]) -> int:
    """The command line of the module docstring: prints "VENV REQUIREMENTS" lines."""
    if argv[:1] == ["list"] and len(argv) == 1:
        chosen = ENVIRONMENTS
    elif argv[:1] == ["version"] and len(argv) == 2:
        chosen = (for_version(argv[1]),)
    elif argv[:1] == ["model"] and len(argv) == 2:
        chosen = (BY_MODEL_TYPE.get(model_type_at(argv[1]), DEFAULT),)
    else:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    print("\n".join(f"{env.venv} {env.requirements}" for env in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
