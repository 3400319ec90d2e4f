"""MiniCPM-V 4.7 (native transformers classes, the transformers 5 environment): the ids, labels,
pixels and modality ids we train on are what its own processor and chat template make, and the
model lays out the canvas M-RoPE positions of a padded batch as it does for the processor's
output; packing, which would need those positions per sample, is refused."""
import json

import pytest
import torch
from PIL import Image

from conftest import make_image
from dataset import SupervisedDataset

pytestmark = pytest.mark.native  # runs in the transformers 5 environment (requirements-transformers5.txt)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir("4.7"))


def conversation(content, answer="Coloured noise."):
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("shape", ["one image", "two images", "text only"])
def test_items_are_what_its_processor_makes(tiny, processor, tmp_path, shape):
    tok, model = tiny("4.7")
    sizes = {"one image": [(500, 300)], "two images": [(1000, 460), (200, 120)], "text only": []}[shape]
    paths = [make_image(tmp_path / f"{k}.png", size, seed=k) for k, size in enumerate(sizes)]
    if len(paths) == 2:
        record = {"image": {"<image_00>": str(paths[0]), "<image_01>": str(paths[1])},
                  "conversations": conversation("<image_00>\n<image_01>\nWhich is wider?")}
        content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is wider?"}]
    elif paths:
        record = {"image": str(paths[0]), "conversations": conversation("<image>\nWhat is this?")}
        content = [{"type": "image"}, {"type": "text", "text": "What is this?"}]
    else:
        record, content = {"conversations": conversation("Hi")}, "Hi"
    item = SupervisedDataset([record], tok, model.config)[0]
    text = processor.apply_chat_template(conversation(content), tokenize=False)
    images = [Image.open(path).convert("RGB") for path in paths]
    expected = processor(text=[text], images=images or None, return_tensors="pt")
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert item["mm_token_type_ids"].tolist() == expected["mm_token_type_ids"][0].tolist()
    assert "position_ids" not in item  # the model lays them out
    if paths:
        assert torch.equal(item["pixel_values"], expected["pixel_values"][0])
        assert item["target_sizes"].tolist() == expected["target_sizes"].tolist()
    answer = tok.encode("Coloured noise.<|im_end|>", add_special_tokens=False)
    trained = [t for t in item["labels"].tolist() if t != -100]
    assert trained == answer  # the empty think block before the answer is context


def test_a_padded_batch_has_the_logits_of_the_processors_inputs(tiny, processor, tmp_path):
    """The canvas positions the model computes from the batch's modality ids and padding mask are
    those of its processor's inputs, sample by sample (the longer sample's padding changes nothing)."""
    tok, model = tiny("4.7")
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    records = [{"image": str(wide), "conversations": conversation("<image>\nWhat is this?")},
               {"conversations": conversation("Hi", "Hello.")}]
    dataset = SupervisedDataset(records, tok, model.config)
    batch = dataset.collator([dataset[0], dataset[1]])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**dataset.version.family.forward_kwargs(batch), attention_mask=batch["attention_mask"]).logits
        for row, (content, images) in enumerate([([{"type": "image"}, {"type": "text", "text": "What is this?"}],
                                                  [Image.open(wide).convert("RGB")]), ("Hi", None)]):
            answer = "Coloured noise." if images else "Hello."
            text = processor.apply_chat_template(conversation(content, answer), tokenize=False)
            alone = model(**processor(text=[text], images=images, return_tensors="pt")).logits[0]
            torch.testing.assert_close(logits[row, :len(alone)], alone, rtol=1e-4, atol=1e-5)


def test_packing_is_refused_where_the_model_lays_out_its_own_positions(tmp_path):
    """Even with full-attention layers only (no linear attention to refuse it first)."""
    import finetune
    import make_tiny_model

    model_dir = make_tiny_model.build("4.7", tmp_path / "full", layer_types=["full_attention"] * 2)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": conversation("Hi", "Hello.")}]))
    with pytest.raises(ValueError, match=r"--packing: MiniCPM-V 4.7 lays out its position ids itself over a whole "
                                         r"row \(canvas M-RoPE\)"):
        finetune.train(["--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir",
                        str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", "--packing", "true"])
