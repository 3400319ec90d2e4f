"""Each preference pair's images through the vision tower once, not once per side.

A pair batch holds the chosen rows, then the rejected rows of the same pairs
(minicpmv_ft/preference_dataset.py): the second half's images are the first half's. Within the
blocks below the model's own vision entry point computes the first half's features and hands
the same tensors to both halves, so the tower and resampler run on P pairs' views instead of 2P
and their gradients are the sum over both sides, as two runs would give.

- remote code (2.0-4.5): `get_vllm_embedding(data)` skips its vision part when `data` carries
  `vision_hidden_states` (per sample); the chosen rows' are computed and given for all rows.
- native (4.6+): the model's forward calls `get_image_features(pixels, target_sizes)` for a
  batch's image views (its video path too, frames as views); the first half of the views is
  computed and its per-view features listed twice.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def _rows(value, rows: int):
    """The first `rows` rows of a per-row batch entry (a tensor or a per-sample list)."""
    return value[:rows] if isinstance(value, (list, torch.Tensor)) and len(value) == 2 * rows else value


@contextmanager
def _instead(owner, name: str, replacement):
    """owner.name is `replacement` (an instance attribute over the class method) within the block."""
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        delattr(owner, name)


def remote_code_vision_once(owner, pairs: int):
    """The block in which `owner` (a remote-code MiniCPM-V model) embeds 2 x `pairs` rows with
    the first `pairs` rows' vision features."""
    original = owner.get_vllm_embedding

    def embedding(data):
        if "vision_hidden_states" in data:
            return original(data)
        _, features = original({key: _rows(value, pairs) for key, value in data.items()})
        return original({**data, "vision_hidden_states": list(features) * 2})

    return _instead(owner, "get_vllm_embedding", embedding)


def native_vision_once(owner, pairs: int):
    """The block in which `owner` (a native model holding the vision tower) computes image
    features for the first half of a call's views only. A call with an odd number of views is
    not a pair batch's (the blank view of a text-only batch) and runs as it is."""
    original = owner.get_image_features

    def features(pixel_values, target_sizes, *args, **kwargs):
        views = target_sizes.shape[0]
        if views % 2:
            return original(pixel_values, target_sizes, *args, **kwargs)
        half = target_sizes[:views // 2]
        if not torch.equal(half, target_sizes[views // 2:]):
            raise RuntimeError(f"a batch of {pairs} preference pairs whose rejected rows' image views differ from "
                               "the chosen rows' (the pair collator puts the same views in both halves)")
        # NaViT-packed [1, 3, patch, N]: each view takes h * w patches of `patch` columns
        width = int((half[:, 0] * half[:, 1]).sum()) * pixel_values.shape[-2]
        output = original(pixel_values[..., :width], half, *args, **kwargs)
        output.pooler_output = list(output.pooler_output) * 2
        return output

    return _instead(owner, "get_image_features", features)
