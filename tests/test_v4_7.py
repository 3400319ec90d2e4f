"""MiniCPM-V 4.7 (native transformers classes, the transformers 5 environment): the ids, labels,
pixels and modality ids we train on are what its own processor and chat template make, and the
model lays out the canvas M-RoPE positions of a padded batch as it does for the processor's
output, and in a packed row each sample's as alone; the MoE's router loss and LoRA on its fused
experts."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

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


def test_a_multi_turn_thinking_sample_is_what_its_processor_makes(tiny, processor, tmp_path):
    """Given reasoning in the last answer is trained (its think block rendered by the template);
    the earlier answer loses its reasoning and trains its text."""
    tok, model = tiny("4.7")
    turns = [{"role": "user", "content": "Same?"}, {"role": "assistant", "content": "No."},
             {"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "<think>\ncompare them\n</think>\n\nColours."}]
    item = SupervisedDataset([{"conversations": turns}], tok, model.config)[0]
    expected = processor(text=[processor.apply_chat_template(turns, tokenize=False)], return_tensors="pt")
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    labels = item["labels"].tolist()
    trained = [t for t, label in zip(item["input_ids"].tolist(), labels) if label != -100]
    assert tok.decode(trained) == "No.<|im_end|>compare them\n</think>\n\nColours.<|im_end|>"


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
        logits = model(**dataset.version.family.forward_kwargs(batch, model), attention_mask=batch["attention_mask"]).logits
        for row, (content, images) in enumerate([([{"type": "image"}, {"type": "text", "text": "What is this?"}],
                                                  [Image.open(wide).convert("RGB")]), ("Hi", None)]):
            answer = "Coloured noise." if images else "Hello."
            text = processor.apply_chat_template(conversation(content, answer), tokenize=False)
            alone = model(**processor(text=[text], images=images, return_tensors="pt")).logits[0]
            torch.testing.assert_close(logits[row, :len(alone)], alone, rtol=1e-4, atol=1e-5)


def test_a_packed_row_gives_each_sample_its_own_canvas_positions(tiny_model_dir, processor, tmp_path):
    """A 4.7 with full-attention layers only (the real ones' linear attention refuses packing):
    each sample of a packed row has the logits of the model's forward on its processor's inputs
    alone; laid out over the whole row by the model instead, the later samples' would differ."""
    import make_tiny_model
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    path = make_tiny_model.build("4.7", tmp_path / "full", layer_types=["full_attention"] * 2)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    records = [{"conversations": conversation("Hi", "Hello.")},
               {"image": str(wide), "conversations": conversation("<image>\nWhat is this?")}]
    dataset = SupervisedDataset(records, tok, model.config)
    row = dataset.packed_collator([dataset[0], dataset[1]])
    row.pop("labels")
    with torch.no_grad():
        # no cache: with one, transformers would not look for the samples' restarts
        packed = model(**dataset.version.family.forward_kwargs(row, model), use_cache=False).logits[0]
        whole_row = model(**{key: value for key, value in row.items() if key != "position_ids"},
                          use_cache=False).logits[0]
        start = 0
        for content, images, answer in [("Hi", None, "Hello."), ([{"type": "image"}, {"type": "text", "text":
                                         "What is this?"}], [Image.open(wide).convert("RGB")], "Coloured noise.")]:
            text = processor.apply_chat_template(conversation(content, answer), tokenize=False)
            alone = model(**processor(text=[text], images=images, return_tensors="pt")).logits[0]
            torch.testing.assert_close(packed[start:start + len(alone)], alone, rtol=1e-4, atol=1e-5)
            start += len(alone)
    assert not torch.allclose(whole_row[-5:], packed[-5:], atol=1e-3)


def test_lora_on_the_moes_fused_experts_trains_each_expert_and_merges(tiny_model_dir, tmp_path):
    """--lora_target_modules naming the MoE's `mlp.experts` adapts its fused [experts, out, in]
    tensors (PEFT's target_parameters), beside the default's projections; merge_lora folds them
    into the checkpoint's own tensors and the merged model computes what the adapter did."""
    import transformers
    from safetensors.torch import load_file

    import finetune
    import merge_lora
    from minicpmv_ft.loading import load_for_inference
    from minicpmv_ft.versions import VERSIONS

    default = VERSIONS["4.7"].lora_target_regex
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"image": str(wide), "conversations": conversation("<image>\nWhat is this?")},
                                {"conversations": conversation("Hi", "Hello.")}]))
    base = tiny_model_dir("4.7-moe")
    finetune.train(["--model_name_or_path", str(base), "--data_path", str(data), "--output_dir", str(tmp_path / "out"),
                    "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--max_steps", "3",
                    "--learning_rate", "1e-2", "--use_lora", "true", "--lora_r", "4", "--lora_dropout", "0",
                    "--disable_tqdm", "true", "--lora_target_modules", default[:-1] + r"|mlp\.experts)"])
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    layers = AutoConfig.from_pretrained(base).text_config.num_hidden_layers
    assert sorted(adapter["target_parameters"]) == sorted(
        f"model.language_model.layers.{k}.mlp.experts.{p}" for k in range(layers) for p in ("gate_up_proj", "down_proj"))
    assert "model.language_model.layers.0.linear_attn.out_proj" in adapter["target_modules"]

    processor, peft_model, _, _ = load_for_inference(str(tmp_path / "out"))
    merged = transformers.AutoModelForImageTextToText.from_pretrained(
        merge_lora.merge(str(tmp_path / "out"), str(tmp_path / "merged"))).eval()
    text = processor.apply_chat_template(conversation([{"type": "image"}, {"type": "text", "text": "What is this?"}]),
                                         tokenize=False)
    inputs = processor(text=[text], images=[Image.open(wide).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, peft_model(**inputs).logits, rtol=1e-5, atol=5e-5)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert before.keys() == after.keys()
    experts = {k for k in before if ".mlp.experts." in k}
    assert experts and all(not torch.equal(before[k], after[k]) for k in experts)  # every layer's experts


def test_the_moe_router_loss_is_its_llms_own_and_logged_apart(tiny, tmp_path):
    """4.7-35B-A3B's Qwen3.5-MoE: the step's loss is the LM loss plus router_aux_loss_coef x the
    load-balancing loss its own modeling module defines over the router logits of the LLM's
    forward (padding masked); the dense 4.7 has none."""
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe

    from test_packing import make_trainer

    tok, model = tiny("4.7-moe")
    assert make_trainer(tiny("4.7")[1], "4.7", tmp_path).router_loss is None
    wide = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
    records = [{"image": str(wide), "conversations": conversation("<image>\nWhat is this?")},
               {"conversations": conversation("Hi", "Hello.")}]
    dataset = SupervisedDataset(records, tok, model.config)
    batch = dataset.collator([dataset[0], dataset[1]])
    trainer = make_trainer(model, "4.7-moe", tmp_path)
    model.train()
    with torch.no_grad():
        total = trainer.compute_loss(model, dict(batch), num_items_in_batch=1)
        router, trainer.router_loss = trainer.router_loss, None
        lm_only = trainer.compute_loss(model, dict(batch), num_items_in_batch=1)
        kwargs = {key: value for key, value in batch.items() if key != "labels"}
        out = model.model(**kwargs, output_router_logits=True)
    text = model.config.text_config
    assert len(out.router_logits) == text.num_hidden_layers  # every layer routes
    expected = modeling_qwen3_5_moe.load_balancing_loss_func(out.router_logits, text.num_experts,
                                                             text.num_experts_per_tok, batch["attention_mask"])
    assert float(expected) > 0 and router.coefficient == text.router_aux_loss_coef
    torch.testing.assert_close(total, lm_only + text.router_aux_loss_coef * expected, rtol=1e-6, atol=1e-7)
    # the training micro-batch's, unweighted, kept as a tensor (no device sync before logging)
    assert all(isinstance(value, torch.Tensor) for value in trainer.router_losses)
    assert [float(value) for value in trainer.router_losses] == [pytest.approx(float(expected))]
    logs = {"loss": 1.0}
    trainer.router_losses.append(3 * expected)
    trainer.log(logs)  # the mean since the last log, beside the loss
    assert logs["router_aux_loss"] == pytest.approx(2 * float(expected)) and trainer.router_losses == []
