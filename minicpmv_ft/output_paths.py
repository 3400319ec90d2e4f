"""Outputs that would destroy what a command reads: a training run, a merge or a prediction
whose output is one of its own inputs (the base model's folder, the data's folder, the data
file) is refused before anything is written, in one line."""
from __future__ import annotations

import os


class OutputPathError(ValueError):
    """An output path that would overwrite one of the command's inputs."""


def _same(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def check_output_folder(option: str, output: str, folders: dict[str, str | None]) -> None:
    """`output` (a folder the command writes files into) must be none of `folders` (what each
    input is -> its folder, None where there is none)."""
    for what, folder in folders.items():
        if folder and _same(output, folder):
            raise OutputPathError(f"{option} {output} is {what}: the outputs would overwrite its files; "
                                  "choose another folder")


def check_output_file(option: str, output: str, inputs: dict[str, str | None]) -> None:
    """`output` (a file the command writes) must be no input file and not a folder."""
    if os.path.isdir(output):
        example = os.path.join(output, "predictions.jsonl")
        raise OutputPathError(f"{option} {output} is a folder; give a file name (e.g. {example})")
    for what, path in inputs.items():
        if path and os.path.exists(output) and _same(output, path):
            raise OutputPathError(f"{option} {output} is {what}: writing it would erase it; choose another file")


def data_folder(path: str | None) -> str | None:
    """The folder holding a data file (its README and other files live there)."""
    return os.path.dirname(os.path.abspath(path)) if path else None
