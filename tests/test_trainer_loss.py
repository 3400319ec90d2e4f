"""The trainer's loss: the LM head sees only labelled positions, and the value equals the
plain shifted cross-entropy over the full logits."""
import pytest
import torch

from conftest import VERSIONS
from dataset import SupervisedDataset, data_collator
from trainer import lm_head_on_positions, shifted_targets


def samples(image_file):
    path = image_file("p.png", (700, 500))
    return [{"image": path, "conversations": [{"role": "user", "content": "<image>Describe."},
                                              {"role": "assistant", "content": "Noise, mostly grey."}]},
            {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                               {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}]


@pytest.mark.parametrize("version", VERSIONS)
def test_lm_head_runs_on_label_positions_only_and_loss_matches_full_logits(tiny, image_file, version):
    tok, model = tiny(version)
    model.eval()
    batch = data_collator([SupervisedDataset(samples(image_file), tok, model.config)[i] for i in range(2)])
    labels = batch.pop("labels")
    positions, targets = shifted_targets(labels)
    assert targets.numel() == int((labels[:, 1:] != -100).sum()) and targets.numel() < labels.numel() // 4
    seen = []
    lm_head = model.llm.get_output_embeddings()
    record = lm_head.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    with torch.no_grad():
        with lm_head_on_positions(lm_head, positions):
            selected = model(data=batch, attention_mask=batch["attention_mask"]).logits
        full = model(data=batch, attention_mask=batch["attention_mask"]).logits
    record.remove()
    hidden, vocab = model.llm.config.hidden_size, model.llm.config.vocab_size
    assert seen[0] == (torch.Size([1, targets.numel(), hidden]), torch.Size([1, targets.numel(), vocab]))
    assert seen[1][1] == torch.Size([*labels.shape, vocab])  # without the hook: every position
    ours = torch.nn.functional.cross_entropy(selected[0].float(), targets)
    reference = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
