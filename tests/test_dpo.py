"""--method dpo on every version: with the reference equal to the starting model the first loss is
ln 2 whichever way the reference comes (the data, the reference pass's file, the adapters
switched off, a frozen copy); the loss and its gradients equal a direct computation from each
answer's full logits, the log-probs are the SFT loss's, and each pair's images go through the
vision tower once."""
import copy
import json
import math

import pytest
import torch

from conftest import REGISTRY, VERSIONS
from minicpmv_ft.preference_reference import ADAPTER_OFF, COPY, IN_BATCH
from minicpmv_ft.versions import submodule

LN_2 = math.log(2)


def pair_records(image_file, logps=None):
    """Two RLAIF-V pairs about two images of different sizes (with `logps`: their reference sums)."""
    images = image_file("a.png", (700, 500), seed=1), image_file("b.png", (300, 420), seed=2)
    pairs = [{"id": "a", "image": images[0], "question": "What is in the picture?", "chosen": "A red circle.",
              "rejected": "A large blue square."},
             {"id": "b", "image": images[1], "question": "Which colour is it?", "chosen": "Green.",
              "rejected": "It is purple, I think."}]
    for pair, (chosen, rejected) in zip(pairs, logps or []):
        pair["logps"] = [chosen, rejected, 0.0, 0.0]
    return pairs


def preference_trainer(model, version, tmp_path, reference=IN_BATCH, reference_model=None, **settings):
    from dpo_trainer import PreferenceSettings, PreferenceTrainer
    from minicpmv_ft.arguments import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", method="dpo",
                             dataloader_num_workers=0)
    return PreferenceTrainer(model=model, args=args, version=REGISTRY[version], reference_model=reference_model,
                             preference=PreferenceSettings(reference=reference, **settings))


def pair_batch(tok, model, records):
    from minicpmv_ft.preference_dataset import PreferenceDataset

    dataset = PreferenceDataset(records, tok, model.config, max_slice_nums=2)
    return dataset, dataset.collator([dataset[i] for i in range(len(dataset))])


def lora_model(model, version, tmp_path):
    import finetune
    from minicpmv_ft.arguments import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "lora"), use_cpu=True, report_to="none", use_lora=True,
                             method="dpo")
    return finetune.configure_trainable(copy.deepcopy(model), REGISTRY[version], args)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_first_loss_is_ln_2_for_every_source_of_the_reference(tiny, tiny_model_dir, image_file, tmp_path,
                                                                   version):
    import reference_logps
    from minicpmv_ft.arguments import DataArguments, ModelArguments

    tok, model = tiny(version)
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pair_records(image_file)))
    # (b) the reference pass over the data file, with the model as it loads from disk
    reference_logps.compute(ModelArguments(str(tiny_model_dir(version))),
                            DataArguments(str(data), max_slice_nums=2), reference_logps.PassArguments(batch_size=1))
    lines = [json.loads(line) for line in (tmp_path / "pairs.reference_logps.jsonl").read_text().splitlines()]
    passed = [tuple(line["logps"]) for line in lines[1:]]
    assert [line["pair"] for line in lines[1:]] == [0, 1] and all(value < 0 for pair in passed for value in pair)
    # (a) the same numbers inside the data; (c) computed each step: adapters off, a frozen copy
    dataset, batch = pair_batch(tok, model, pair_records(image_file, passed))
    runs = {"data": (model, IN_BATCH, None), "adapter_off": (lora_model(model, version, tmp_path), ADAPTER_OFF, None),
            "copy": (model, COPY, copy.deepcopy(model))}
    for name, (trained, reference, reference_model) in runs.items():
        trainer = preference_trainer(trained.train(), version, tmp_path, reference, reference_model)
        trainer.router_loss = None  # the MoE's load-balancing term comes on top of the DPO loss
        with torch.no_grad():
            loss = trainer.compute_loss(trained, dict(batch), num_items_in_batch=torch.tensor(2))
        assert abs(float(loss) - LN_2) < 1e-5, (name, float(loss))
    model.eval()


@pytest.mark.parametrize("version", VERSIONS)
def test_loss_gradients_and_log_probs_equal_a_direct_computation_with_the_images_seen_once(tiny, image_file,
                                                                                           tmp_path, version):
    from dataset import SupervisedDataset
    from minicpmv_ft.batching import collate
    from minicpmv_ft.preference_data import to_pair
    from trainer import MiniCPMVTrainer

    tok, model = tiny(version)
    # float64: the tiny vision tower's gradients are around 1e-9, where float32 rounding of two
    # summation orders would blur whether both sides' gradients reach it
    model = copy.deepcopy(model).double().train()
    if any(hasattr(module, "num_experts") for module in model.modules()):
        model.set_experts_implementation("eager")  # the MoE's default, torch's grouped_mm, takes no float64
    entry = REGISTRY[version]
    records = pair_records(image_file)
    dataset, batch = pair_batch(tok, model, records)
    beta, sft_weight = 0.5, 0.3
    trainer = preference_trainer(model, version, tmp_path, beta=beta, sft_weight=sft_weight)
    trainer.router_loss = None  # the MoE's load balance is over a micro-batch's tokens, not a pair's
    # a reference near the policy (margins -2 and 1): a saturated sigmoid would leave the DPO
    # term without gradient, and the comparison without teeth
    policy = trainer.answer_logps(model, dict(batch)).tolist()
    reference = [(policy[0] + 1.5, policy[2] - 0.5), (policy[1] - 0.25, policy[3] + 0.75)]
    batch["reference"] = torch.tensor(reference)
    fed = []  # what reaches the resampler / merger: each pair's images once
    hook = submodule(model, entry.resampler_module).register_forward_pre_hook(
        lambda module, args: fed.append(args[0].numel()))
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=None)
    loss.backward()
    hook.remove()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    # each answer alone through the model's own forward, full logits
    sides = [SupervisedDataset([getattr(to_pair(record), side)], tok, model.config, max_slice_nums=2)[0]
             for side in ("chosen", "rejected") for record in records]
    logps, tokens, alone = [], [], []
    for item in sides:
        row = collate([item], entry.family.media)
        labels = row.pop("labels")
        hook = submodule(model, entry.resampler_module).register_forward_pre_hook(
            lambda module, args: alone.append(args[0].numel()))
        logits = model(**entry.family.forward_kwargs(row, model), attention_mask=row["attention_mask"]).logits
        hook.remove()
        mask = labels[0, 1:] != -100
        token_logps = torch.log_softmax(logits[0, :-1].float(), -1)[mask].gather(1, labels[0, 1:][mask, None])
        logps.append(token_logps.sum())
        tokens.append(int(mask.sum()))
    chosen, rejected = torch.stack(logps[:2]), torch.stack(logps[2:])
    given = batch["reference"].to(chosen.dtype)  # as the trainer reads it (float32)
    margin = (chosen - rejected) - (given[:, 0] - given[:, 1])
    direct = (-torch.nn.functional.logsigmoid(beta * margin) - sft_weight * chosen / torch.tensor(tokens[:2])).mean()
    direct.backward()
    torch.testing.assert_close(loss, direct.to(loss.dtype), rtol=1e-5, atol=1e-8)
    assert set(ours) == {name for name, p in model.named_parameters() if p.grad is not None}
    # each gradient against its own module's scale: the tiny vision tower's are around 1e-10, the
    # LLM's up to 1; float32 inside the float64 model (the cross-entropy, 4.6/4.7's linear
    # attention) leaves 1e-5 of the module's largest; one side's gradients missing moves them by half
    modules = (entry.vision_module, entry.resampler_module, entry.llm_module)
    group = {name: next((m for m in modules if name.startswith(m + ".")), "") for name in ours}
    largest = {m: max(ours[name].abs().max().item() for name in ours if group[name] == m) for m in set(group.values())}
    for name, p in model.named_parameters():
        # an attention key bias's gradient is zero in exact arithmetic (softmax ignores a shift
        # common to all keys): only rounding is left to compare there
        if p.grad is not None and not name.endswith("k_proj.bias"):
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5 * largest[group[name]],
                                       msg=lambda message: f"{name}: {message}")
    assert sum(fed) * 2 == sum(alone), (fed, alone)  # the four answers alone ran each image twice

    # the log-probs the logs report are the SFT loss's on the same answers
    sums = trainer.metric_sums[True]
    sft = MiniCPMVTrainer(model=model, args=trainer.args, version=entry)
    with torch.no_grad():
        sft_sums = [float(sft.compute_loss(model, collate([item], entry.family.media), num_items_in_batch=1))
                    for item in sides]
    # rel: float32 inside the float64 model, rows alone against four padded rows
    assert float(sums[4]) == pytest.approx(-(sft_sums[0] + sft_sums[1]), rel=1e-4)
    assert float(sums[5]) == pytest.approx(-(sft_sums[2] + sft_sums[3]), rel=1e-4)
