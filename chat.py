"""Ask a fine-tuned MiniCPM-V checkpoint (full, LoRA adapter, or merged) about images.

    python chat.py --model output/minicpmv_full --image cat.jpg --question "What is this?"
    python chat.py --model output/minicpmv_lora [--base openbmb/MiniCPM-V-2_6] --image cat.jpg --question "..."

Uses the checkpoint's own inference path (its chat() and chat template), so the answer is
what users of the checkpoint get.
"""
from __future__ import annotations

import argparse
import builtins
import json
import os
import typing

import torch
from PIL import Image
from transformers import AutoModel, AutoTokenizer

from minicpmv_ft.versions import detect_version


def load_for_chat(model_dir: str, base: str | None = None, dtype=None):
    """(tokenizer, model, version) for a full checkpoint or a LoRA adapter folder."""
    builtins.List = typing.List  # the real 2.5/2.6 resampler.py needs it on torch >= 2.7
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    adapter_config = os.path.join(model_dir, "adapter_config.json")
    if os.path.exists(adapter_config):
        with open(adapter_config) as handle:
            base = base or json.load(handle)["base_model_name_or_path"]
        if not (os.path.isdir(base) or "/" in base):
            raise SystemExit(f"adapter {model_dir} was trained on {base!r}, which is not here; pass --base")
        from peft import PeftModel

        model = AutoModel.from_pretrained(base, trust_remote_code=True, dtype=dtype)
        model = PeftModel.from_pretrained(model, model_dir)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=True)
    else:
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return tokenizer, model, detect_version(model.config, tokenizer)


def answer(model, tokenizer, version, images, question: str, history=(), max_new_tokens: int = 256) -> str:
    """One answer to `question` about `images` (PIL), after earlier (role, content) turns."""
    msgs = [{"role": r, "content": c} for r, c in history]
    content = list(images) + [question] if images else question
    msgs.append({"role": "user", "content": content})
    with torch.no_grad():
        if version.chat_takes_context:
            image = images[0] if images else None
            msgs[-1]["content"] = question
            return model.chat(image, msgs, None, tokenizer, max_new_tokens=max_new_tokens)[0]
        return model.chat(None, msgs, tokenizer, max_new_tokens=max_new_tokens, sampling=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned checkpoint or LoRA adapter folder")
    parser.add_argument("--base", default=None, help="base model of a LoRA adapter (default: the one it records)")
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several")
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    args = parser.parse_args(argv)
    tokenizer, model, version = load_for_chat(args.model, args.base)
    images = [Image.open(path).convert("RGB") for path in args.image]
    print(answer(model, tokenizer, version, images, args.question, max_new_tokens=args.max_new_tokens))


if __name__ == "__main__":
    main()
