"""Inference of a remote-code checkpoint (2.0-4.5) through its own chat(), as its users call it."""
from __future__ import annotations

import functools
import inspect

import torch

from .versions import set_max_slice_nums
from .video import decode_frames, plan_frames, read_video_info


def chat_options(model, version, max_new_tokens: int, thinking: bool, max_slice_nums: int | None) -> dict:
    """chat()'s keyword arguments: deterministic decoding (sampling off: the checkpoints' beam
    search), the answer length, 4.5's thinking switch and, when given, the slice limit: an
    argument of 2.6+ chat() (their config must keep agreeing with their processor), the config
    of 2.0 and 2.5, whose chat() reads it there."""
    options = {"max_new_tokens": max_new_tokens, "sampling": False}
    if version.chat.thinking:
        options["enable_thinking"] = thinking
    if max_slice_nums is not None:
        if version.chat_takes_max_slice_nums:
            options["max_slice_nums"] = max_slice_nums
        else:
            set_max_slice_nums(model.config, version, max_slice_nums)
    return options


def chat_answers(model, tokenizer, version, conversations: list[list[dict]], image, system: str | None,
                 max_new_tokens: int, thinking: bool, max_slice_nums: int | None, extra: dict | None) -> list[str]:
    """One answer per conversation ({"role", "content"} messages; 2.6+: images inside the content),
    in one chat() call where there are several (2.6+ batch inference); `image`: the one image of
    2.0 / 2.5, whose chat() takes it as its first argument; `extra`: more chat() options (a
    video's)."""
    options = {**chat_options(model, version, max_new_tokens, thinking, max_slice_nums), **(extra or {})}
    if system:
        options["system_prompt"] = system
    with torch.no_grad():
        if len(conversations) > 1:
            return list(model.chat(None, conversations, tokenizer, **options))
        if version.chat_takes_context:  # 2.0: chat(image, msgs, context, tokenizer) -> (answer, ...)
            return [model.chat(image, conversations[0], None, tokenizer, *processor_argument(model), **options)[0]]
        return [model.chat(image, conversations[0], tokenizer, **options)]


def processor_argument(model) -> tuple:
    """What a 2.0 chat() takes after its tokenizer: nothing, or (revision c22a36a, "adapt for
    transformers processing", and later) its processor, which builds the prompt's ids and pixels
    there; it is the checkpoint's own, from the folder its config was loaded from (an adapter's
    base)."""
    if "processor" not in inspect.signature(model.chat).parameters:
        return ()
    return (_processor(model.config._name_or_path),)


@functools.lru_cache(maxsize=2)
def _processor(path: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, trust_remote_code=True)


def video_frames(version, path: str):
    """(frames, chat() options) of a video as the checkpoint's own video example feeds it: the
    version's frame sampling, no image ids, its slices per frame, and 4.5's temporal groups
    (VideoError when the file cannot be read)."""
    plan = plan_frames(read_video_info(path), version.video)
    frames = decode_frames(path, plan.indices)
    options = {"use_image_id": False, "max_slice_nums": version.video.max_slice_nums}
    if version.video.grouped:
        options["temporal_ids"] = plan.groups
    return frames, options
