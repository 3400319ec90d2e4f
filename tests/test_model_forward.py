"""Collator batches go through model(data=batch), a cross-entropy loss and backward, on
each tiny model, including batches that mix image and text-only samples."""
import pytest
import torch

from conftest import REMOTE_VERSIONS
from dataset import SupervisedDataset, data_collator


def samples(image_file):
    big, small = image_file("big.png", (900, 500), 1), image_file("small.png", (200, 260), 2)
    return [
        {"id": "img", "image": big, "conversations": [{"role": "user", "content": "<image>\nWhat?"},
                                                      {"role": "assistant", "content": "Colours."}]},
        {"id": "text", "conversations": [{"role": "user", "content": "Say hi."},
                                         {"role": "assistant", "content": "Hi! Nice to meet you."}]},
        {"id": "two", "image": {"<image_00>": small, "<image_01>": big},
         "conversations": [{"role": "user", "content": "<image_00><image_01>Same?"},
                           {"role": "assistant", "content": "No."}]},
    ]


def loss_of(model, batch):
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(data=batch, attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


@pytest.mark.long
@pytest.mark.parametrize("version", REMOTE_VERSIONS)
@pytest.mark.parametrize("picks", [[0, 1, 2], [1], [0, 2]], ids=["mixed", "text-only", "images"])
def test_batch_forward_loss_backward(tiny, image_file, version, picks):
    tok, model = tiny(version)
    ds = SupervisedDataset(samples(image_file), tok, model.config)
    batch = data_collator([ds[i] for i in picks])
    model.train()
    model.zero_grad()
    loss = loss_of(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    # the vision tower and resampler take part in the graph (a dummy image for text-only batches)
    assert model.resampler.query.grad is not None
    assert any(p.grad is not None for p in model.vpm.parameters())
    assert model.llm.get_output_embeddings().weight.grad.abs().sum() > 0
    if picks != [1]:
        assert model.resampler.query.grad.abs().sum() > 0


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_padding_does_not_change_a_samples_logits(tiny, image_file, version):
    tok, model = tiny(version)
    model.eval()
    ds = SupervisedDataset(samples(image_file), tok, model.config)
    items = [ds[i] for i in range(3)]
    with torch.no_grad():
        batch = data_collator(items)
        together = model(data=batch, attention_mask=batch["attention_mask"]).logits
        for i, item in enumerate(items):
            alone_batch = data_collator([item])
            alone = model(data=alone_batch, attention_mask=alone_batch["attention_mask"]).logits[0]
            assert torch.allclose(together[i, : len(item["input_ids"])], alone, atol=1e-4)


def test_real_2_5_code_crashes_on_empty_list_tgt_sizes(tiny, image_file):
    """Like the real 2.5 remote code, the tiny one stacks every sample's tgt_sizes: a
    text-only sample must bring an empty [0, 2] tensor, which our collator does."""
    tok, model = tiny("2.5")
    ds = SupervisedDataset(samples(image_file), tok, model.config)
    batch = data_collator([ds[0], ds[1]])
    assert batch["tgt_sizes"][1].shape == (0, 2)
    batch.pop("labels")
    batch["tgt_sizes"][1] = []
    with pytest.raises(TypeError):
        model(data=batch)
