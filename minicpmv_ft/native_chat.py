"""Inference of a native checkpoint (4.6), which has no chat(): its processor renders the
conversation with its own chat template and makes the inputs, generate() answers greedily."""
from __future__ import annotations

import torch
from PIL import Image


def content_items(content) -> str | list[dict]:
    """chat()-style content (a string, or images and strings in order) as chat-template items."""
    if isinstance(content, str):
        return content
    return [{"type": "image"} if isinstance(item, Image.Image) else {"type": "text", "text": item} for item in content]


def generate_answers(model, processor, conversations: list[list[dict]], max_new_tokens: int = 256,
                     thinking: bool = False, max_slice_nums: int | None = None) -> list[str]:
    """One answer per conversation ([{"role", "content"}], images inside the content, as
    chat.chat_messages makes them), all in one left-padded generate() call."""
    texts = [processor.apply_chat_template([{"role": m["role"], "content": content_items(m["content"])} for m in msgs],
                                           tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
             for msgs in conversations]
    images = [item for msgs in conversations for m in msgs if not isinstance(m["content"], str)
              for item in m["content"] if isinstance(item, Image.Image)]
    options = {} if max_slice_nums is None else {"max_slice_nums": int(max_slice_nums)}
    inputs = processor(text=texts, images=images or None, return_tensors="pt", padding=True, **options).to(model.device)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return [text.strip() for text in processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:],
                                                            skip_special_tokens=True)]
