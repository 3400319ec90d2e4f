"""The native checkpoints (4.6, 4.7 dense and MoE): one training step's loss on a conversation (with
an image, a video or text only) is the loss of the model's own forward on what its own processor
and chat template return for that conversation, with labels on the assistant's answers only;
packed the same as unpacked where packing is allowed."""
import pytest
import torch
from PIL import Image

from conftest import NATIVE_VERSIONS, make_image, make_video
from dataset import SupervisedDataset
from test_packing import make_trainer

pytestmark = pytest.mark.native  # runs in the transformers 5 environment (requirements-transformers5.txt)

ANSWERS = ["Coloured noise.", "Hello.", "It gets brighter."]


def records(tmp_path):
    """The records of an image sample, a text-only one and a video sample, and what its processor
    takes for each: (content, images, video file)."""
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10, size=(320, 240))
    data = [{"image": str(wide), "conversations": [{"role": "user", "content": "<image>\nWhat is this?"}]},
            {"conversations": [{"role": "user", "content": "Hi"}]},
            {"video": clip, "conversations": [{"role": "user", "content": "<video>\nWhat changes?"}]}]
    for record, answer in zip(data, ANSWERS):
        record["conversations"].append({"role": "assistant", "content": answer})
    inputs = [([{"type": "image"}, {"type": "text", "text": "What is this?"}], [Image.open(wide).convert("RGB")], None),
              ("Hi", None, None), ([{"type": "video"}, {"type": "text", "text": "What changes?"}], None, clip)]
    return data, inputs


def own_loss(model, processor, content, answer, images, video):
    """The model's own forward and loss on its processor's inputs (a video decoded whole by
    transformers' own PyAV reader, its frames sampled by the processor); the labels are the
    answer's tokens and the end-of-turn token after them (found at the end of the ids), all else
    -100."""
    from transformers.video_utils import read_video_pyav

    tok = processor.tokenizer
    conversation = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    videos = {}
    if video:
        frames, metadata = read_video_pyav(video, sample_indices_fn=lambda metadata, **_: list(range(metadata.total_num_frames)))
        videos = {"videos": [frames], "videos_kwargs": {"video_metadata": [metadata]}}
    inputs = processor(text=[processor.apply_chat_template(conversation, tokenize=False)], images=images,
                       return_tensors="pt", **videos)
    ids = inputs["input_ids"][0].tolist()
    trained = tok.encode(answer + "<|im_end|>", add_special_tokens=False)
    end = max(k for k in range(len(ids) - len(trained) + 1) if ids[k:k + len(trained)] == trained) + len(trained)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, end - len(trained):end] = torch.tensor(trained)
    return model(**inputs, labels=labels).loss, len(trained)


def step_losses(tok, model, version, tmp_path, packed):
    """(the steps' losses, the model's own) for each sample alone and all in one batch: padded,
    or packed into one row."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tok.name_or_path)
    data, inputs = records(tmp_path)
    dataset = SupervisedDataset(data, tok, model.config)
    trainer = make_trainer(model, version, tmp_path)
    trainer.router_loss = None  # the MoE's router loss, added on top: test_v4_7.py
    model.eval()  # no dropout: the same forward twice
    with torch.no_grad():
        own = [own_loss(model, processor, content, answer, images, video)
               for (content, images, video), answer in zip(inputs, ANSWERS)]
        collate = dataset.packed_collator if packed else dataset.collator
        # one sample a step: the mean over its labelled tokens; all: the mean over all samples'
        steps = [trainer.compute_loss(model, collate([dataset[k]]), num_items_in_batch=own[k][1])
                 for k in range(len(data))]
        steps.append(trainer.compute_loss(model, collate([dataset[k] for k in range(len(data))]),
                                          num_items_in_batch=sum(count for _, count in own)))
    expected = [loss for loss, _ in own] + [sum(loss * count for loss, count in own) / sum(count for _, count in own)]
    return torch.stack(steps), torch.stack(expected)


@pytest.mark.parametrize("version", NATIVE_VERSIONS)
def test_a_steps_loss_is_the_models_own_loss_on_its_processors_inputs(tiny, packable, tmp_path, version):
    steps, own = step_losses(*tiny(version), version, tmp_path, packed=False)
    torch.testing.assert_close(steps, own, rtol=1e-5, atol=1e-6)
    steps, own = step_losses(*packable(version), version, tmp_path, packed=True)
    torch.testing.assert_close(steps, own, rtol=1e-5, atol=1e-6)
