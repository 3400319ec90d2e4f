"""Where a DPO run takes the reference log-probs from (`--dpo_reference`), decided before any
weight loads.

    auto         as data, when every pair has them; else, with LoRA, the model with its
                 adapters switched off; else an error saying how to get them
    data         the data's (RLAIF-V's `logps`), or the reference pass's file beside the data
                 (reference_logps.py, minicpmv_ft/reference_file.py); a pair without them is an
                 error naming it
    adapter_off  LoRA only: the same model with the adapters (and the modules trained beside
                 them) switched off, one extra forward without gradient per step, no second copy
    copy         a frozen copy of the starting model, kept in memory beside the trained one
                 (full fine-tuning; not under ZeRO-3, which partitions the weights as they load)
"""
from __future__ import annotations

from .errors import DataError

REFERENCE_CHOICES = ("auto", "data", "adapter_off", "copy")
# What the trainer does (dpo_trainer.py): read them from the batch, or compute them one of two ways
IN_BATCH, ADAPTER_OFF, COPY = "batch", "adapter_off", "copy"
REFERENCE_SOURCES = {IN_BATCH: "from the data (its own, or the reference pass's file)",
                     ADAPTER_OFF: "computed each step by the model with its adapters switched off",
                     COPY: "computed each step by a frozen copy of the starting model"}


def check_reference_choice(choice: str):
    if choice not in REFERENCE_CHOICES:
        raise ValueError(f"--dpo_reference {choice!r}: choose one of {', '.join(REFERENCE_CHOICES)}")


def resolve_reference(choice: str, datasets: list, use_lora: bool, zero3: bool) -> str:
    """The trainer's reference source for `--dpo_reference choice` on `datasets` (the train and
    eval PreferenceDataset; None: no eval set); ValueError / DataError for a choice that cannot
    work."""
    check_reference_choice(choice)
    missing = next(((pairs.source, index, pairs.pair_id(index)) for pairs in datasets if pairs is not None
                    for index in pairs.kept if pairs.references[index] is None), None)
    if choice == "data" or (choice == "auto" and missing is None):
        if missing is not None:
            raise DataError(*missing, "--dpo_reference data: this pair has no reference "
                            "log-probs (\"logps\"); give every pair its own, or let the run compute them "
                            "(--dpo_reference adapter_off with LoRA, copy for full fine-tuning)")
        return IN_BATCH
    if choice == "adapter_off" or (choice == "auto" and use_lora):
        if not use_lora:
            raise ValueError("--dpo_reference adapter_off needs --use_lora true (the reference is the model with its "
                             "adapters switched off); for full fine-tuning use --dpo_reference copy")
        return ADAPTER_OFF
    if choice == "copy":
        if zero3:
            raise ValueError("--dpo_reference copy does not work under ZeRO-3 (a copy of partitioned weights is "
                             "not a model); give the pairs reference log-probs, or train with LoRA and "
                             "--dpo_reference adapter_off")
        return COPY
    raise ValueError(f"{missing[0]}: pair {missing[1]} (id {missing[2]!r}; maybe others too) has no reference "
                     "log-probs and full fine-tuning has no adapters to switch off; compute them once with `python "
                     "reference_logps.py` and this run's --model_name_or_path, --data_path and data options, train "
                     "with --use_lora true, or keep a frozen copy of the model with --dpo_reference copy (twice the "
                     "weights' memory)")
