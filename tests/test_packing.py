"""--packing: packs are planned within the budget, a packed batch gives the same summed loss and
gradients as its samples one by one, and a sample cannot see another in the same row."""
import copy

import pytest
import torch

from conftest import REGISTRY, VERSIONS
from dataset import SupervisedDataset
from minicpmv_ft.packing import (PackedDataset, block_causal_mask, padding_share,
                                 plan_packs, sample_starts)
from minicpmv_ft.versions import submodule

# Every version packs (4.6's and 4.7's linear attention is refused: the packable fixture builds
# them with full attention layers only)
PACKABLE_VERSIONS = VERSIONS


def test_plan_packs_fits_every_sample_once_within_the_budget():
    lengths = [900, 100, 1500, 400, 2048, 300, 600, 50, 1000, 700]
    packs = plan_packs(lengths, 2048)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 2048 for pack in packs)
    # best-fit decreasing: 2048 | 1500+400+100 | 1000+900+50+(...) and so on: 4 packs for 7598 tokens
    assert packs == [[4], [1, 2, 3], [0, 7, 8], [5, 6, 9]]
    assert plan_packs([3000, 10], 2048) == [[0], [1]]  # longer than the budget: a pack of its own


def test_padding_share_counts_padding_to_the_longest_of_each_batch():
    assert padding_share([10, 30, 20, 20], 2) == pytest.approx(1 - 80 / 100)
    assert padding_share([5, 5, 5], 4) == 0


def samples(image_file):
    wide = image_file("wide.png", (1000, 460), seed=1)  # sliced: source + 2 slices
    small = image_file("small.png", (300, 200), seed=2)
    other = image_file("other.png", (420, 420), seed=3)
    return [
        {"conversations": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]},
        {"image": wide, "conversations": [{"role": "user", "content": "<image>\nWhat is this?"},
                                          {"role": "assistant", "content": "Coloured noise."},
                                          {"role": "user", "content": "Sure?"},
                                          {"role": "assistant", "content": "Yes."}]},
        {"image": {"<image_00>": small, "<image_01>": other},
         "conversations": [{"role": "user", "content": "<image_00> vs <image_01>: which is larger?"},
                           {"role": "assistant", "content": "The second one."}]},
        {"conversations": [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "1 2 3"}]},
    ]


def views(item) -> int:
    return len(item["tgt_sizes"] if "tgt_sizes" in item else item["target_sizes"])


def make_trainer(model, version, tmp_path):
    from finetune import TrainingArguments
    from trainer import MiniCPMVTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], per_device_train_batch_size=4)
    return MiniCPMVTrainer(model=model, args=args, version=REGISTRY[version])


def summed_loss_and_grads(trainer, model, batches):
    model.zero_grad()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=1)  # / 1: the summed loss
        loss.backward()
        total += loss.item()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return total, grads


@pytest.mark.long
@pytest.mark.parametrize("version", PACKABLE_VERSIONS)
def test_packed_batch_has_the_loss_and_gradients_of_its_samples_one_by_one(packable, image_file, tmp_path, version):
    tok, model = packable(version)
    # float64: float32 rounding of a different summation order (one long row against four short
    # ones) would blur the comparison of gradient elements that nearly cancel
    model = copy.deepcopy(model).double().train()
    if any(hasattr(module, "num_experts") for module in model.modules()):
        model.set_experts_implementation("eager")  # the MoE's default, torch's grouped_mm, takes no float64
    dataset = SupervisedDataset(samples(image_file), tok, model.config)
    items = [dataset[i] for i in range(len(dataset))]
    assert [views(item) for item in items] == [0, 3, 2, 0]
    trainer = make_trainer(model, version, tmp_path)
    trainer.router_loss = None  # the MoE's load balance is over a micro-batch's tokens: packing changes it
    packed = dataset.packed_collator(items)
    assert packed["input_ids"].shape == (1, sum(len(item["input_ids"]) for item in items))
    assert "attention_mask" not in packed
    one_by_one, grads = summed_loss_and_grads(trainer, model, [dataset.collator([item]) for item in items])
    together, packed_grads = summed_loss_and_grads(trainer, model, [packed])
    assert together == pytest.approx(one_by_one, rel=1e-4)
    vision = REGISTRY[version].vision_module + "."
    assert grads.keys() == packed_grads.keys() and any(name.startswith(vision) for name in grads)
    for name in grads:
        # atol: a millionth of the tensor's largest element, as some norms compute in float32 even in
        # a float64 model (Qwen3.5's in 4.6); a sample seeing another moves gradients far more
        scale = grads[name].abs().max().item()
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-9 + 1e-6 * scale, msg=name)


@pytest.mark.long
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("version", PACKABLE_VERSIONS)
def test_a_packed_sample_cannot_see_the_one_before_it(packable, image_file, tmp_path, version, attention):
    """Changing the first sample's tokens moves its own logits and none of the later samples'
    (with an ordinary causal mask instead, they do move: the check has teeth)."""
    tok, model = packable(version)
    model = copy.deepcopy(model).eval()
    submodule(model, REGISTRY[version].llm_module).config._attn_implementation = attention
    dataset = SupervisedDataset(samples(image_file), tok, model.config)
    items = [dataset[i] for i in (0, 1, 2)]
    trainer = make_trainer(model, version, tmp_path)
    first_length = len(items[0]["input_ids"])
    changed = dict(items[0], input_ids=items[0]["input_ids"].clone())
    changed["input_ids"][2:-2] = changed["input_ids"][2:-2].flip(0)  # same tokens, another order

    def logits(batch, isolate=True):
        mask = trainer._attention_mask(model, batch) if isolate else torch.ones_like(batch["input_ids"])
        with torch.no_grad():
            return model(**REGISTRY[version].family.forward_kwargs(batch, model), attention_mask=mask, use_cache=False).logits[0]

    pack = dataset.packed_collator
    before, after = logits(pack(items)), logits(pack([changed] + items[1:]))
    assert not torch.allclose(before[:first_length], after[:first_length])
    torch.testing.assert_close(after[first_length:], before[first_length:], rtol=1e-5, atol=1e-5)
    leaky_before = logits(pack(items), isolate=False)
    leaky_after = logits(pack([changed] + items[1:]), isolate=False)
    assert not torch.allclose(leaky_before[first_length:], leaky_after[first_length:], atol=1e-4)


def test_pack_items_shifts_image_bounds_and_restarts_positions(tiny, image_file):
    tok, model = tiny("2.6")
    dataset = SupervisedDataset(samples(image_file), tok, model.config)
    items = [dataset[i] for i in range(4)]
    row = dataset.pack_items(items)
    lengths = [len(item["input_ids"]) for item in items]
    offsets = [0, lengths[0], lengths[0] + lengths[1]]
    expected = torch.cat([items[1]["image_bound"] + offsets[1], items[2]["image_bound"] + offsets[2]])
    assert torch.equal(row["image_bound"], expected) and row["image_bound"].shape == (5, 2)
    assert torch.equal(row["tgt_sizes"], torch.cat([item["tgt_sizes"] for item in items]))
    assert torch.equal(row["position_ids"], torch.cat([torch.arange(n) for n in lengths]))
    assert sample_starts(row["position_ids"][None])[0].tolist() == sum(([k] * n for k, n in enumerate(lengths)), [])
    for k, (start, end) in enumerate(row["image_bound"].tolist()):  # each bound still covers its query tokens
        assert set(row["input_ids"][start:end].tolist()) == {tok.unk_token_id}, k
    assert all(row["pixel_values"][k] is view for k, view in enumerate(items[1]["pixel_values"] + items[2]["pixel_values"]))


def test_packed_dataset_serves_packs_within_model_max_length(tiny, image_file):
    tok, model = tiny("2.5")
    dataset = SupervisedDataset(samples(image_file) * 5, tok, model.config, model_max_length=700)
    packed = PackedDataset(dataset, 700)
    assert sum(len(pack) for pack in packed.packs) == 20 and len(packed) < 20
    for i in range(len(packed)):
        item = packed[i]
        assert len(item["input_ids"]) == packed.lengths[i] <= 700
    assert packed.fill == sum(dataset.lengths) / (len(packed) * 700)


def test_block_causal_mask_in_the_form_each_attention_takes():
    positions = torch.tensor([[0, 1, 2, 0, 1]])
    allowed = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(block_causal_mask(positions, torch.float32, "eager")[0, 0], allowed.float())
    additive = block_causal_mask(positions, torch.bfloat16, "sdpa")[0, 0]
    assert torch.equal(additive == 0, allowed.bool()) and additive.min() == torch.finfo(torch.bfloat16).min
    with pytest.raises(ValueError, match="eager or sdpa"):
        block_causal_mask(positions, torch.float32, "flash_attention_2")
