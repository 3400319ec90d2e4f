"""MiniCPM-V 4.6 (native transformers classes, its own environment): the ids, labels and pixels we
train on are what its own processor and chat template make; the data check counts what
training encodes; what packing and multi-process training refuse or handle."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from conftest import REGISTRY, make_image
from dataset import SupervisedDataset

pytestmark = pytest.mark.native  # runs in the transformers 5 environment (requirements-transformers5.txt)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("4.6")


@pytest.fixture(scope="module")
def processor(model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir)


def item_of(processor, records, tmp_path, **options):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    config = AutoConfig.from_pretrained(processor.tokenizer.name_or_path)
    dataset = SupervisedDataset(str(path), processor.tokenizer, config, **options)
    return dataset, [dataset[k] for k in range(len(dataset))]


def reference(processor, messages, images, **options):
    """What its inference feeds the model: its chat template, then its processor."""
    text = processor.apply_chat_template(messages, tokenize=False)
    return processor(text=[text], images=images or None, return_tensors="pt", **options)


def trained_text(processor, item):
    labels = item["labels"].tolist()
    runs, run = [], []
    for label in labels + [-100]:
        if label == -100 and run:
            runs.append(processor.tokenizer.decode(run))
            run = []
        elif label != -100:
            run.append(label)
    return runs


def test_multi_image_multi_turn_thinking_sample_is_its_processors(processor, tmp_path):
    wide, small = make_image(tmp_path / "w.png", (1000, 460), 1), make_image(tmp_path / "s.png", (300, 200), 2)
    record = {"image": {"<image_00>": wide, "<image_01>": small},
              "conversations": [{"role": "user", "content": "<image_01>\n<image_00>\nSame?"},
                                {"role": "assistant", "content": "No."},
                                {"role": "user", "content": "Why?"},
                                {"role": "assistant", "content": "<think>\ncompare them\n</think>\n\nColours."}]}
    _, (item,) = item_of(processor, [record], tmp_path)
    images = [Image.open(small).convert("RGB"), Image.open(wide).convert("RGB")]  # text order
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
                {"role": "assistant", "content": "No."}, {"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "<think>\ncompare them\n</think>\n\nColours."}]
    expected = reference(processor, messages, images)
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(item["pixel_values"], expected["pixel_values"][0])
    # (rows, cols) of patches: the small image upscaled to 392x560, unsliced; the wide one's
    # source 280x672 and a 1 x 2 grid of 448x448 slices (sizes multiples of 14 x 4: 16x merging)
    assert item["target_sizes"].tolist() == expected["target_sizes"].tolist() == [[28, 40], [20, 48], [32, 32],
                                                                                  [32, 32]]
    # the earlier answer loses no text; the final one trains its reasoning, not the <think> opener
    assert trained_text(processor, item) == ["No.<|im_end|>", "compare them\n</think>\n\nColours.<|im_end|>"]
    ids = item["input_ids"].tolist()
    assert ids.count(processor.image_token_id) == (28 * 40 + 20 * 48 + 2 * 32 * 32) // 16 == 258


def test_plain_answer_gets_the_empty_think_block_as_context(processor, tmp_path):
    record = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    _, (item,) = item_of(processor, [record], tmp_path)
    expected = reference(processor, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], [])
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert processor.tokenizer.decode(item["input_ids"]).endswith("<think>\n\n</think>\n\nHello.<|im_end|>\n")
    assert trained_text(processor, item) == ["Hello.<|im_end|>"]
    assert item["target_sizes"].shape == (0, 2) and item["pixel_values"].shape == (3, 14, 0)


@pytest.mark.parametrize("size", [(40, 30), (448, 448), (640, 480), (1000, 460), (460, 1000), (3000, 500),
                                  (2000, 2000)])
@pytest.mark.parametrize("max_slice_nums", [None, 1, 4])
def test_planned_views_and_placeholder_match_its_processor(processor, tmp_path, size, max_slice_nums):
    """The data check plans from the header; the plan gives the processor's own views and text."""
    path = make_image(tmp_path / "x.png", size)
    record = {"image": path, "conversations": [{"role": "user", "content": "What?"},
                                               {"role": "assistant", "content": "Noise."}]}
    dataset, (item,) = item_of(processor, [record], tmp_path, max_slice_nums=max_slice_nums)
    options = {} if max_slice_nums is None else {"max_slice_nums": max_slice_nums}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "Noise."}]
    expected = reference(processor, messages, [Image.open(path).convert("RGB")], **options)
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert item["target_sizes"].tolist() == expected["target_sizes"].tolist()
    report = dataset.reports[0]  # from the header only
    assert report.tokens == len(item["input_ids"]) and report.views_per_image == [len(item["target_sizes"])]


def test_packing_is_refused_for_its_linear_attention_layers(model_dir, tmp_path):
    import finetune

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello."}]}]))
    with pytest.raises(ValueError, match=r"--packing: MiniCPM-V 4.6 .* has linear_attention layers \(1 of 2, e.g. "
                                         r"layer 0\), whose state runs across a packed row"):
        finetune.train(["--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir",
                        str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", "--packing", "true"])


def test_text_only_batch_runs_the_vision_tower_with_no_effect_on_the_loss(tiny, processor, tmp_path):
    """Every process must give the vision tower a gradient each step (ZeRO / DDP reduce them all)."""
    from test_packing import make_trainer

    _, model = tiny("4.6")
    record = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    dataset, items = item_of(processor, [record], tmp_path)
    batch = dataset.collator(items)
    assert "pixel_values" not in batch
    trainer = make_trainer(model, "4.6", tmp_path)
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=1)
    loss.backward()
    vision = [p.grad for n, p in model.named_parameters() if n.startswith(("model.vision_tower.", "model.merger."))]
    assert vision and all(g is not None and not g.any() for g in vision)
    with torch.no_grad():
        plain = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1]
    targets = batch["labels"][0, 1:]
    keep = targets != -100
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(plain[keep], targets[keep],
                                                                          reduction="sum").item(), rel=1e-5)


def test_a_chat_template_that_renders_otherwise_is_refused(processor, tmp_path):
    """Training renders with the version's format; the checkpoint's own template must agree."""
    import copy

    from minicpmv_ft.processor_encoding import ProcessorSampleEncoder
    
    other = copy.deepcopy(processor)
    other.chat_template = processor.chat_template.replace("{{- '\n' -}}{%- endif -%}", "{{- ' ' -}}{%- endif -%}")
    assert other.chat_template != processor.chat_template
    ProcessorSampleEncoder(processor.tokenizer, REGISTRY["4.6"], processor)  # its own: fine
    with pytest.raises(ValueError, match=r"chat template renders a conversation differently .*\n  its template: "
                                         r"'<\|im_start\|>user\\n<\|image_pad\|> What is it\?"):
        ProcessorSampleEncoder(processor.tokenizer, REGISTRY["4.6"], other)
