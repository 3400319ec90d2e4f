"""--packing for a model that lays out its own position ids (4.7's canvas M-RoPE: time, height
and width per token, from the modality ids and the views' sizes): each sample of a packed row
gets the positions the model's own `get_rope_index` gives it alone, which it would not if the
model laid out the whole row as one sequence."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


def packed_positions(owner, batch: dict) -> torch.Tensor:
    """position_ids [4, 1, T] of a packed row (input_ids, position_ids [1, T] restarting at 0 at
    each sample, mm_token_type_ids, the views' target sizes): row 0 the text positions, from
    whose restarts the LLM builds its block-causal mask; rows 1-3 each sample's canvas as
    `owner.get_rope_index` lays it out for the samples as a right-padded batch (padding changes
    no sample's positions)."""
    text = batch["position_ids"][0]
    starts = (text == 0).nonzero().flatten().tolist()
    lengths = [end - start for start, end in zip(starts, starts[1:] + [len(text)])]

    def rows(key):
        return pad_sequence(list(batch[key][0].split(lengths)), batch_first=True)

    mask = pad_sequence([torch.ones(n, dtype=torch.long, device=text.device) for n in lengths], batch_first=True)
    canvas, _ = owner.get_rope_index(rows("input_ids"), mm_token_type_ids=rows("mm_token_type_ids"),
                                     target_sizes=batch.get("target_sizes"),
                                     target_sizes_videos=batch.get("target_sizes_videos"), attention_mask=mask)
    per_sample = torch.cat([canvas[:, k, :n] for k, n in enumerate(lengths)], dim=1)
    return torch.cat([text[None], per_sample]).unsqueeze(1)
