"""--packing: several samples in one training sequence, each attending only to itself.

    packs = plan_packs(dataset.lengths, model_max_length)   # sample indices per pack
    PackedDataset(dataset, model_max_length)[i]              # one pack as one item
    dataset.packed_collator([item, item, ...])               # the micro-batch as ONE row [1, T]

(a dataset's pack_items and packed_collator: minicpmv_ft/batching.py's pack and packed_collate
with its checkpoint's media layout).

A pack is whole samples (a sample is never split, so neither is an image), their token ids
laid end to end with position ids restarting at 0 at each sample, pixel views and
`tgt_sizes` concatenated in order and `image_bound` rows shifted by the sample's offset.
The collator lays the packs of a micro-batch end to end too, so there is no padding and no
attention_mask: sample boundaries are where position ids restart. How the LLM keeps samples
apart is the version's `packed_attention` (registry):
- "position_ids": transformers' own packed-sequence support in the Llama / Qwen2 / Qwen3
  classes (2.5, 2.6, 4.0, 4.5): with attention_mask None it builds a block-causal mask from
  the position ids for eager / sdpa / flex attention, and flash_attention_2 runs varlen
  kernels over the same boundaries (it needs the single row the collator makes).
- "mask_4d": 2.0's remote MiniCPM LLM has no such support; it takes a prepared 4-D mask
  (`block_causal_mask`), in the form its attention implementation expects (no flash).
A model that lays out its own position ids (4.7's canvas M-RoPE: registry positions_from_model)
gets each sample's from its own `get_rope_index` beside the restarting text positions
(minicpmv_ft/canvas_positions.py).

The first token of every sample is prompt (label -100), so the last token of one sample is
never trained to predict the first token of the next.
"""
from __future__ import annotations

import bisect
import logging

import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


def plan_packs(lengths: list[int], budget: int) -> list[list[int]]:
    """Sample indices grouped into packs of at most `budget` tokens: best-fit decreasing (each
    sample, longest first, goes to the pack it fills most tightly). Packs keep their samples in
    data order. A sample longer than the budget (none after truncation) gets a pack of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack number), sorted
    for i in order:
        slot = bisect.bisect_left(room, (lengths[i], -1))
        if slot < len(room):
            free, pack = room.pop(slot)
        else:
            free, pack = budget, len(packs)
            packs.append([])
        packs[pack].append(i)
        if free - lengths[i] > 0:
            bisect.insort(room, (free - lengths[i], pack))
    return [sorted(pack) for pack in packs]


class PackedDataset(Dataset):
    """Packs of `dataset`'s samples (planned once from the lengths the data check measured);
    the Trainer's sampler shuffles the packs each epoch."""

    def __init__(self, dataset, budget: int):
        self.dataset, self.budget = dataset, int(budget)
        self.packs = plan_packs(dataset.lengths, self.budget)
        self.lengths = [sum(dataset.lengths[i] for i in pack) for pack in self.packs]
        logger.info("packing: %d samples into %d packs of up to %d tokens (%.1f%% of the packs' room filled)",
                    len(dataset), len(self.packs), self.budget, 100 * self.fill)

    @property
    def fill(self) -> float:
        """Tokens / (packs x budget)."""
        return sum(self.lengths) / max(1, len(self.packs) * self.budget)

    def __len__(self):
        return len(self.packs)

    def __getitem__(self, i):
        pack = self.dataset.pack_items  # for the dataset's item format
        if not getattr(self.dataset, "skip_bad_samples", False):
            return pack([self.dataset[j] for j in self.packs[i]])
        # --skip_bad_samples: a sample that fails now leaves the pack (counted by the dataset)
        items = [item for item in map(self.dataset.usable_item, self.packs[i]) if item is not None]
        return pack(items or [self.dataset[self.packs[i][0]]])


# Layer kinds that find sample boundaries from the position ids of a packed row; others (e.g.
# Qwen3.5's gated-delta-net "linear_attention", whose convolution and recurrent state run
# across the whole row in transformers' code) would let one sample see the previous one.
PACKABLE_LAYERS = ("full_attention", "sliding_attention")


def check_packable(config, model_name: str):
    """ValueError when the LLM has layers that packing cannot keep samples apart in."""
    text_config = getattr(config, "text_config", None) or config
    kinds = sorted(set(getattr(text_config, "layer_types", None) or []) - set(PACKABLE_LAYERS))
    if kinds:
        layers = [k for k, kind in enumerate(text_config.layer_types) if kind in kinds]
        raise ValueError(f"--packing: {model_name} has {', '.join(kinds)} layers ({len(layers)} of "
                         f"{len(text_config.layer_types)}, e.g. layer {layers[0]}), whose state runs across a packed row "
                         "from one sample into the next; train without --packing (--group_by_length true keeps "
                         "padding low)")


def sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, L] sample number of each token: a new sample wherever the position id
    does not follow the previous one (the rule transformers applies to packed position ids)."""
    previous = torch.cat([position_ids[:, :1] - 1, position_ids[:, :-1]], dim=1)
    return (position_ids != previous + 1).cumsum(dim=1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor:
    """4-D mask [B, 1, L, L] letting each token see the earlier tokens of its own sample, in the
    form transformers' _prepare_4d_causal_attention_mask helpers (which the 2.0 remote LLM
    calls) take a prepared mask: eager inverts a 1 (attend) / 0 mask; sdpa adds the mask
    as it is (0 / most negative)."""
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"--packing on this model needs eager or sdpa attention, not {attn_implementation}")
    sample = sample_starts(position_ids)
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (sample[:, :, None] == sample[:, None, :]) & causal
    if attn_implementation == "eager":
        return allowed[:, None].to(dtype)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def padding_share(lengths: list[int], batch_size: int) -> float:
    """Padded / all positions when consecutive groups of `batch_size` samples are padded to their
    longest (the unpacked collator)."""
    padded = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return 1 - sum(lengths) / max(1, padded)
