"""Write docs/options.md, the table of finetune.py's own options, from their declaration.

    python tools/options_doc.py            # rewrite docs/options.md
    python tools/options_doc.py --check    # exit 1 if docs/options.md differs from the declaration

The flags, defaults and help texts live in minicpmv_ft/arguments.py only; this page is derived
from them (tests/test_arguments.py keeps it up to date), with a column saying which options a
resume must match (RESULT_ARGUMENTS).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "docs" / "options.md"

HEADER = """# finetune.py options

`finetune.py` (and so `finetune_ds.sh` / `finetune_lora.sh`, which pass every flag given to them
on) takes every `transformers.TrainingArguments` flag plus the options below;
`check_data.py` takes the same model and data options. "Resume must match": a run resumed
with another value is refused (a longer `--num_train_epochs` / `--max_steps` is allowed; see
[training.md](training.md#interrupting-and-resuming)). Of transformers' own flags a resume
must match: {inherited}.

This page is written by `python tools/options_doc.py` from `minicpmv_ft/arguments.py`; edit
the help texts there.
"""


def default_text(field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return "none" if value in (None, []) else f"`{value}`"


def render() -> str:
    from minicpmv_ft import arguments

    declared = {cls.__name__: [f for f in dataclasses.fields(cls) if f.name in vars(cls).get("__annotations__", {})]
                for cls in (arguments.ModelArguments, arguments.DataArguments, arguments.TrainingArguments)}
    ours = {f.name for fields in declared.values() for f in fields}
    inherited = [name for name in arguments.RESULT_ARGUMENTS if name not in ours]
    lines = [HEADER.format(inherited=", ".join(f"`--{name}`" for name in inherited))]
    titles = {"ModelArguments": "Model", "DataArguments": "Data",
              "TrainingArguments": "Training (ours, and transformers' flags whose default we change)"}
    for name, fields in declared.items():
        lines += [f"## {titles[name]}", "", "| flag | default | resume must match | meaning |", "|---|---|---|---|"]
        for field in fields:
            result = field.name in arguments.RESULT_ARGUMENTS or field.name in arguments.FINGERPRINTED_FILES
            help_text = field.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `--{field.name}` | {default_text(field)} | {'yes' if result else 'no'} | {help_text} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/options_doc.py")
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
