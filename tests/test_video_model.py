"""The tiny 4.5 model's 3-D resampler: one 64-token block per group of frames, and the real
code's split of the resampler output between samples by frame count (not group count), which
training avoids by giving the model one row (minicpmv_ft/packing.py's collator)."""
import copy

import torch

from dataset import data_collator
from minicpmv_ft.batching import REMOTE_MEDIA, packed_collate


def video_item(tok, model, seed, times):
    """A sample with one group of len(times) 224x224 frames: one placeholder, 2 frames of pixels."""
    q, patch = model.config.query_num, model.config.patch_size
    ids = [tok.convert_tokens_to_ids("<|im_start|>"), tok.im_start_id] + [tok.unk_token_id] * q + [tok.im_end_id, 42]
    generator = torch.Generator().manual_seed(seed)
    frames = [torch.rand(3, patch, 224 * 224 // patch, generator=generator) * 2 - 1 for _ in times]
    length = len(ids)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.arange(length),
            "labels": torch.full((length,), -100), "attention_mask": torch.ones(length, dtype=torch.long),
            "pixel_values": frames, "tgt_sizes": torch.tensor([[16, 16]] * len(times), dtype=torch.int32),
            "image_bound": torch.tensor([[2, 2 + q]]), "image_bounds": torch.tensor([[2, 2 + q]]),
            "temporal_ids": [list(times)]}


def block(embeddings, row, start, q):
    return embeddings[row, start:start + q]


def test_a_group_of_frames_is_one_block_and_depends_on_every_frame_and_time(tiny):
    tok, model = tiny("4.5")
    model = copy.deepcopy(model).eval()
    item = video_item(tok, model, 0, (3, 5))
    with torch.no_grad():
        _, features = model.get_vllm_embedding(data_collator([item]))
        # one block for the group of two frames (the split's slice [0:2] by frame count finds one)
        assert features[0].shape == (1, model.config.query_num, model.config.hidden_size)
        grouped = features[0][0]
        other_time = model.get_vllm_embedding(data_collator([video_item(tok, model, 0, (3, 9))]))[1][0][0]
        changed = dict(item, pixel_values=[item["pixel_values"][0], torch.zeros_like(item["pixel_values"][1])])
        other_frame = model.get_vllm_embedding(data_collator([changed]))[1][0][0]
    assert not torch.allclose(grouped, other_time) and not torch.allclose(grouped, other_frame)


def test_two_grouped_videos_in_two_rows_lose_the_second_ones_features_and_one_row_keeps_both(tiny):
    tok, model = tiny("4.5")
    model = copy.deepcopy(model).eval()
    q = model.config.query_num
    first, second = video_item(tok, model, 1, (3, 5)), video_item(tok, model, 2, (1, 2))
    with torch.no_grad():
        alone = [block(model.get_vllm_embedding(data_collator([item]))[0], 0, 2, q) for item in (first, second)]
        rows = model.get_vllm_embedding(data_collator([first, second]))[0]
        one_row = model.get_vllm_embedding(packed_collate([first, second], REMOTE_MEDIA))[0]
        raw_unk = model.llm.get_input_embeddings()(torch.tensor([tok.unk_token_id] * q))
    # The real code's split (reproduced): the second sample's block keeps the raw <unk> embeddings
    torch.testing.assert_close(block(rows, 1, 2, q), raw_unk)
    torch.testing.assert_close(block(rows, 0, 2, q), alone[0], rtol=1e-5, atol=1e-5)
    # One row (what training gives the model): each sample its own features
    offset = len(first["input_ids"])
    torch.testing.assert_close(block(one_row, 0, 2, q), alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(one_row, 0, offset + 2, q), alone[1], rtol=1e-5, atol=1e-5)
