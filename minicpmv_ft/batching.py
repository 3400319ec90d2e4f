"""Items -> batches, for both kinds of checkpoint: the text is padded (or laid end to end) the
same way for all; only where the pixels go differs, which a `MediaLayout` says.

    collate(items, layout)          # right-padded [B, L]
    pack(items, layout)             # items end to end in one item (a --packing pack)
    packed_collate(items, layout)   # the micro-batch as ONE row [1, T] (minicpmv_ft/packing.py)

- REMOTE_MEDIA (2.0-4.5, forward(data=batch)): the remote code iterates over per-sample lists
  of views, `tgt_sizes` and `image_bound` rows (and 4.5's `temporal_ids`).
- PROCESSOR_MEDIA (native checkpoints, forward(**batch)): all image views of a batch NaViT-packed
  in one [1, 3, patch, N] tensor with their `target_sizes`, and all video frame views likewise
  (`pixel_values_videos`, `target_sizes_videos`); the model finds the placeholders by the image
  and video tokens' ids.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from .chat_tokens import IGNORE_INDEX, PAD_TOKEN_ID

# Per-token keys and what pads them: input_ids PAD_TOKEN_ID, labels -100 (untrained), the
# attention_mask 0, position ids 0 and modality ids 0 (text; items of a model that lays out its
# own positions carry these instead of position ids).
TEXT_PADDING = {"input_ids": PAD_TOKEN_ID, "position_ids": 0, "labels": IGNORE_INDEX, "attention_mask": 0,
                "mm_token_type_ids": 0}


def token_keys(items: list[dict]) -> list[str]:
    """The per-token keys the items carry."""
    return [key for key in TEXT_PADDING if key in items[0]]


class MediaLayout:
    """Where one kind of checkpoint takes an item's pixels in a batch."""

    def per_sample(self, items: list[dict]) -> dict:
        """The media entries of a padded batch of `items`."""
        raise NotImplementedError

    def join(self, items: list[dict], offsets: list[int]) -> dict:
        """The media entries of `items` laid end to end, item k starting at token offsets[k]."""
        raise NotImplementedError

    def in_row(self, joined: dict) -> dict:
        """The media entries of one packed row made of a `join` result."""
        raise NotImplementedError


class RemoteMedia(MediaLayout):
    def per_sample(self, items):
        bounds = [item["image_bound"] for item in items]
        media = {"pixel_values": [item["pixel_values"] for item in items],
                 "tgt_sizes": [item["tgt_sizes"] for item in items], "image_bound": bounds, "image_bounds": bounds}
        if any("temporal_ids" in item for item in items):
            media["temporal_ids"] = [temporal_groups(item) for item in items]
        return media

    def join(self, items, offsets):
        bounds = torch.cat([item["image_bound"] + offset for item, offset in zip(items, offsets)]).reshape(-1, 2)
        media = {"pixel_values": [view for item in items for view in item["pixel_values"]],
                 "tgt_sizes": torch.cat([item["tgt_sizes"] for item in items]).reshape(-1, 2),
                 "image_bound": bounds, "image_bounds": bounds}
        if any("temporal_ids" in item for item in items):
            media["temporal_ids"] = [group for item in items for group in temporal_groups(item)]
        return media

    def in_row(self, joined):
        return {key: [value] for key, value in joined.items()}


def temporal_groups(item: dict) -> list[list[int]]:
    """An item's temporal_ids: [[-1]] per view of a still image (4.5's 3-D resampler treats
    those as single frames); items of other versions have none."""
    return item.get("temporal_ids") or [[-1]] * len(item["pixel_values"])


class ProcessorMedia(MediaLayout):
    # (pixels, their views' sizes) of images and of video frames; an item carries the video pair
    # only when it has a video
    KINDS = (("pixel_values", "target_sizes"), ("pixel_values_videos", "target_sizes_videos"))

    def per_sample(self, items):
        media = {}
        for pixels, sizes in self.KINDS:
            holders = [item for item in items if sizes in item and len(item[sizes])]
            if holders:  # none: the model runs no vision tower for this kind
                media[pixels] = torch.cat([item[pixels] for item in holders], dim=-1).unsqueeze(0)
                media[sizes] = torch.cat([item[sizes] for item in holders])
        return media

    def join(self, items, offsets):
        return {key: value.squeeze(0) if key.startswith("pixel_values") else value
                for key, value in self.per_sample(items).items()}

    def in_row(self, joined):
        return self.per_sample([joined])


REMOTE_MEDIA = RemoteMedia()
PROCESSOR_MEDIA = ProcessorMedia()


def collate(items: list[dict], layout: MediaLayout) -> dict:
    """Right-pads the items' text into [B, L] (TEXT_PADDING) and adds their media."""
    batch = {key: pad_sequence([item[key] for item in items], batch_first=True, padding_value=TEXT_PADDING[key])
             for key in token_keys(items)}
    return {**batch, **layout.per_sample(items)}


def pack(items: list[dict], layout: MediaLayout) -> dict:
    """Items end to end in one item: position ids restart at each sample, media in order."""
    if any(int(item["labels"][0]) != IGNORE_INDEX for item in items):
        # the chat formats always start with prompt; a trained first token would be predicted
        # from the previous sample
        raise ValueError("cannot pack a sample whose first token is trained")
    packed = {key: torch.cat([item[key] for item in items]) for key in token_keys(items)}
    # items of a model that lays out its own positions carry none; the row's restarts mark the samples
    packed["position_ids"] = torch.cat([item.get("position_ids", torch.arange(len(item["input_ids"])))
                                        for item in items])
    offsets = torch.tensor([0] + [len(item["input_ids"]) for item in items]).cumsum(0).tolist()
    return {**packed, **layout.join(items, offsets)}


def packed_collate(items: list[dict], layout: MediaLayout) -> dict:
    """The micro-batch as one row [1, T] with no padding and no attention_mask (packs or single
    samples alike: the per-token losses are those of the unpacked samples); position ids
    restarting at each sample (a model that lays out its own gets them from
    minicpmv_ft/canvas_positions.py)."""
    row = pack(items, layout)
    text = {key: row[key].unsqueeze(0) for key in ("input_ids", "position_ids", "labels", "mm_token_type_ids")
            if key in row}
    return {**text, **layout.in_row({key: value for key, value in row.items() if key not in TEXT_PADDING})}
