"""The native checkpoints (4.6, 4.7 dense and MoE): one training step's loss on a conversation is
the loss of the model's own forward on what its own processor and chat template return for that
conversation, with labels on the assistant's answers only; packed the same as unpacked where
packing is allowed."""
import pytest
import torch
from PIL import Image

from conftest import NATIVE_VERSIONS, REGISTRY, make_image
from dataset import SupervisedDataset
from test_packing import make_trainer

pytestmark = pytest.mark.native  # runs in the transformers 5 environment (requirements-transformers5.txt)

ANSWERS = ["Coloured noise.", "Hello."]


def records(tmp_path):
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    return wide, [{"image": str(wide), "conversations": [{"role": "user", "content": "<image>\nWhat is this?"},
                                                         {"role": "assistant", "content": ANSWERS[0]}]},
                  {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWERS[1]}]}]


def own_loss(model, processor, content, answer, images):
    """The model's own forward and loss on its processor's inputs; the labels are the answer's
    tokens and the end-of-turn token after them (found at the end of the ids), all else -100."""
    tok = processor.tokenizer
    conversation = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    inputs = processor(text=[processor.apply_chat_template(conversation, tokenize=False)], images=images,
                       return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    trained = tok.encode(answer + "<|im_end|>", add_special_tokens=False)
    end = max(k for k in range(len(ids) - len(trained) + 1) if ids[k:k + len(trained)] == trained) + len(trained)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, end - len(trained):end] = torch.tensor(trained)
    return model(**inputs, labels=labels).loss, len(trained)


def step_losses(tok, model, version, tmp_path, packed):
    """(the steps' losses, the model's own) for each sample alone and both in one batch: padded,
    or packed into one row."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tok.name_or_path)
    wide, data = records(tmp_path)
    dataset = SupervisedDataset(data, tok, model.config)
    trainer = make_trainer(model, version, tmp_path)
    trainer.router_loss = None  # the MoE's router loss, added on top: test_v4_7.py
    model.eval()  # no dropout: the same forward twice
    with torch.no_grad():
        own = [own_loss(model, processor, [{"type": "image"}, {"type": "text", "text": "What is this?"}], ANSWERS[0],
                        [Image.open(wide).convert("RGB")]),
               own_loss(model, processor, "Hi", ANSWERS[1], None)]
        collate = dataset.packed_collator if packed else dataset.collator
        # one sample a step: the mean over its labelled tokens; both: the mean over both samples'
        steps = [trainer.compute_loss(model, collate([dataset[k]]), num_items_in_batch=own[k][1]) for k in (0, 1)]
        steps.append(trainer.compute_loss(model, collate([dataset[0], dataset[1]]),
                                          num_items_in_batch=own[0][1] + own[1][1]))
    expected = [loss for loss, _ in own] + [(own[0][0] * own[0][1] + own[1][0] * own[1][1]) / (own[0][1] + own[1][1])]
    return torch.stack(steps), torch.stack(expected)


@pytest.mark.parametrize("version", NATIVE_VERSIONS)
def test_a_steps_loss_is_the_models_own_loss_on_its_processors_inputs(tiny, packable, tmp_path, version):
    steps, own = step_losses(*tiny(version), version, tmp_path, packed=False)
    torch.testing.assert_close(steps, own, rtol=1e-5, atol=1e-6)
    if REGISTRY[version].positions_from_model:  # packing refused (test_v4_7.py)
        return
    steps, own = step_losses(*packable(version), version, tmp_path, packed=True)
    torch.testing.assert_close(steps, own, rtol=1e-5, atol=1e-6)
