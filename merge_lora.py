"""Merge a LoRA adapter, and the modules trained fully beside it, into its base model.

    python merge_lora.py --adapter output/minicpmv_lora --out output/minicpmv_merged [--base MODEL]

The output loads with AutoModel/AutoTokenizer.from_pretrained(out, trust_remote_code=True)
and no PEFT: weights, config, the base's remote code, tokenizer (with the original inference
chat template) and processor files.
"""
from __future__ import annotations

import argparse
import os

from minicpmv_ft.checkpoints import complete_saved_model
from minicpmv_ft.loading import (AdapterBaseError, adapter_base, adapter_max_slice_nums, is_adapter, load_for_inference,
                                 local_dir)
from minicpmv_ft.output_paths import check_output_folder
from minicpmv_ft.quiet import quiet_third_party


def merge(adapter: str, out: str, base: str | None = None, dtype=None) -> str:
    if not is_adapter(adapter):
        raise ValueError(f"{adapter} has no adapter_config.json: not a LoRA adapter folder")
    check_output_folder("--out", out, {"the base model's folder": local_dir(adapter_base(adapter, base)),
                                       "the adapter's folder (--adapter)": adapter})
    tokenizer, model, _, base_path = load_for_inference(adapter, base, dtype, merge=True)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # the trained slicing: config.json has it (load_for_inference); the processor's copy must agree
    complete_saved_model(local_dir(base_path), out, adapter_max_slice_nums(adapter))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="LoRA output folder (adapter_config.json inside)")
    parser.add_argument("--out", required=True, help="folder for the merged model")
    parser.add_argument("--base", default=None, help="base model (default: the one the adapter records)")
    args = parser.parse_args(argv)
    quiet_third_party()
    try:
        print(f"merged model written to {merge(args.adapter, args.out, args.base)}")
    except (AdapterBaseError, ValueError) as exc:
        parser.exit(2, f"merge_lora.py: {exc}\n")


if __name__ == "__main__":
    main()
