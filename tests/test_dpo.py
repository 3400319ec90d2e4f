"""--method dpo on every version: with the reference equal to the starting model the first loss is
ln 2 whichever way the reference comes (the data, the reference pass's file, the adapters
switched off, a frozen copy); the loss and its gradients equal a direct computation from each
answer's full logits, the log-probs are the SFT loss's, and each pair's images go through the
vision tower once."""
import copy
import json
import re
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
        pair["logps"] = [chosen, chosen / 4, [], rejected, rejected / 4, []]  # as RLAIF-V writes them
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


def dpo_run(tiny_model_dir, sample_data, folder, pairs, *flags):
    """finetune.train on `pairs` (records beside the sample images) with the bundled pairs as eval set."""
    import finetune
    from conftest import cpu_flags

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.json").write_text(json.dumps(pairs))
    return finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(folder / "pairs.json"),
                           "--eval_data_path", str(sample_data / "pairs.json"), "--image_folder", str(sample_data),
                           "--method", "dpo"] + cpu_flags(folder / "out", 6, 2e-3) + ["--logging_steps", "1"] + list(flags))


@pytest.mark.long
def test_a_short_run_raises_the_margin_and_accuracy_and_swapped_pairs_lower_them(tiny_model_dir, sample_data,
                                                                               tmp_path):
    pairs = json.loads((sample_data / "pairs.json").read_text())
    swapped = [{**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]} for pair in pairs]
    results = {}
    for name, data in (("pairs", pairs), ("swapped", swapped)):
        trainer = dpo_run(tiny_model_dir, sample_data, tmp_path / name, data, "--use_lora", "true")
        history = trainer.state.log_history
        assert history[0]["loss"] == pytest.approx(LN_2, abs=1e-4)
        assert history[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
        results[name] = next(entry for entry in reversed(history) if "eval_loss" in entry)
    # the eval set is the bundled pairs, right answers chosen: the margin starts at 0 (reference = start)
    assert results["pairs"]["eval_rewards/margins"] > 0.2
    assert results["pairs"]["eval_rewards/accuracies"] > 0.8  # 5 or 6 of 6
    assert results["swapped"]["eval_rewards/margins"] < -0.2
    assert results["swapped"]["eval_rewards/accuracies"] < 0.2  # 0 or 1 of 6
    assert results["pairs"]["eval_logps/chosen"] > results["swapped"]["eval_logps/chosen"]


def test_the_reference_pass_resumes_is_used_by_training_and_is_refused_for_other_data(tiny_model_dir, sample_data,
                                                                                       tmp_path, capsys):
    import shutil

    import finetune
    import reference_logps
    from conftest import cpu_flags

    data = tmp_path / "pairs.json"
    shutil.copy(sample_data / "pairs.json", data)
    options = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(data), "--image_folder",
               str(sample_data), "--max_slice_nums", "1"]
    reference_logps.main(options + ["--batch_size", "4"])
    written = (tmp_path / "pairs.reference_logps.jsonl").read_text().splitlines()
    assert len(written) == 7 and [json.loads(line)["pair"] for line in written[1:]] == list(range(6))
    # a pass stopped inside its third line: run again, it computes the four pairs left
    (tmp_path / "pairs.reference_logps.jsonl").write_text("\n".join(written[:3]) + "\n" + written[3][:12])
    reference_logps.main(options + ["--batch_size", "3"])
    assert capsys.readouterr().out.splitlines()[-1].endswith("pairs.reference_logps.jsonl: 4 pairs computed")
    resumed = (tmp_path / "pairs.reference_logps.jsonl").read_text().splitlines()
    assert resumed[:3] == written[:3] and len(resumed) == 7
    for before, after in zip(written[3:], resumed[3:]):
        assert json.loads(after)["logps"] == pytest.approx(json.loads(before)["logps"], rel=1e-6)
    reference_logps.main(options)
    assert capsys.readouterr().out.splitlines()[-1].endswith("0 pairs computed (it was complete)")

    # full fine-tuning takes the file: the first loss is ln 2
    train = options + ["--method", "dpo"] + cpu_flags(tmp_path / "out", 1, 1e-3) + ["--logging_steps", "1",
                                                                                    "--max_steps", "1"]
    trainer = finetune.train(train)
    assert trainer.preference.reference == IN_BATCH
    assert trainer.state.log_history[0]["loss"] == pytest.approx(LN_2, abs=1e-4)
    # other encoding options, or changed data: refused, never used
    with pytest.raises(ValueError, match="computed for other encoding options: max_slice_nums 1 then, 2 now"):
        finetune.train([arg if arg != "1" or train[i - 1] != "--max_slice_nums" else "2" for i, arg in enumerate(train)]
                       + ["--output_dir", str(tmp_path / "out2")])
    data.write_text(json.dumps(json.loads(data.read_text())[:5]))
    with pytest.raises(ValueError, match="computed for another version of the data file; delete it and run "
                                         "reference_logps.py again"):
        finetune.train(train + ["--output_dir", str(tmp_path / "out3")])
    (tmp_path / "pairs.reference_logps.jsonl").unlink()
    with pytest.raises(ValueError, match="pair 0 \\(id 'pair-0'; maybe others too\\) has no reference log-probs "
                                         "and full fine-tuning has no adapters to switch off; compute them once"):
        finetune.train(train + ["--output_dir", str(tmp_path / "out4")])


def test_a_reference_file_is_refused_once_an_image_it_was_computed_on_changes(tiny_model_dir, sample_data, tmp_path):
    """Issue 29.3: an image replaced after the reference pass was trained against stale log-probs."""
    import shutil

    import finetune
    import reference_logps
    from conftest import cpu_flags

    pairs = json.loads((sample_data / "pairs.json").read_text())[:2]
    shutil.copytree(sample_data / "images", tmp_path / "images")
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    options = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "pairs.json"),
               "--max_slice_nums", "1"]
    reference_logps.main(options)
    shutil.copy(tmp_path / pairs[0]["image"], tmp_path / pairs[1]["image"])
    train = options + ["--method", "dpo"] + cpu_flags(tmp_path / "out", 1, 1e-3) + ["--max_steps", "1"]
    with pytest.raises(ValueError, match="computed for other images or videos \\(one was changed, added or removed "
                                         "since\\); delete it and run reference_logps.py again"):
        finetune.train(train)


@pytest.mark.parametrize("flags,message", [
    ({"dpo_beta": 0.2}, "--dpo_beta is an option of --method dpo; this run is --method sft"),
    ({"method": "ppo"}, "--method 'ppo': choose sft or dpo"),
    ({"method": "dpo", "dpo_reference": "model"}, "--dpo_reference 'model': choose one of auto, data, adapter_off, copy"),
    ({"method": "dpo", "packing": True}, "--packing with --method dpo"),
    ({"method": "dpo", "dpo_beta": 0.0}, "--dpo_beta must be positive"),
    ({"method": "dpo", "dpo_sft_weight": -1.0}, "--dpo_sft_weight must be >= 0"),
])
def test_dpo_options_are_checked(tmp_path, flags, message):
    from minicpmv_ft.arguments import TrainingArguments

    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **flags)


def test_the_reference_source_is_decided_before_weights_load_and_impossible_ones_are_refused():
    from types import SimpleNamespace

    from minicpmv_ft.preference_reference import resolve_reference
    from minicpmv_ft.errors import DataError

    complete = SimpleNamespace(source="t.json", kept=[0, 2], references=[(-1.0, -2.0), None, (-3.0, -4.0)],
                               pair_id=str)
    partial = SimpleNamespace(source="e.json", kept=[0, 1], references=[(-1.0, -2.0), None], pair_id=str)
    assert resolve_reference("auto", [complete, None], use_lora=False, zero3=True) == IN_BATCH
    assert resolve_reference("auto", [complete, partial], use_lora=True, zero3=False) == ADAPTER_OFF
    assert resolve_reference("copy", [complete, None], use_lora=False, zero3=False) == COPY
    with pytest.raises(DataError, match=r"e.json, sample 1 \(id '1'\): --dpo_reference data: this pair has no reference"):
        resolve_reference("data", [complete, partial], use_lora=True, zero3=False)
    with pytest.raises(ValueError, match="--dpo_reference copy does not work under ZeRO-3"):
        resolve_reference("copy", [complete, None], use_lora=False, zero3=True)
    with pytest.raises(ValueError, match="--dpo_reference adapter_off needs --use_lora true"):
        resolve_reference("adapter_off", [complete, None], use_lora=False, zero3=False)


@pytest.mark.parametrize("version", [v for v in VERSIONS if REGISTRY[v].video is not None])
def test_a_video_pair_runs_its_frames_through_the_vision_tower_once_and_scores_each_side_as_sft(tiny, tmp_path,
                                                                                               version):
    from conftest import make_video
    from dataset import SupervisedDataset
    from minicpmv_ft.batching import collate
    from minicpmv_ft.data_formats import to_native
    from minicpmv_ft.preference_data import to_pair
    from trainer import MiniCPMVTrainer

    tok, model = tiny(version)
    entry = REGISTRY[version]
    video = make_video(tmp_path / "clip.mp4", frames=30, fps=10)
    record = {"id": "v", "video": video, "conversations": [{"role": "user", "content": "<video>\nWhat happens?"}],
              "chosen": "It gets brighter.", "rejected": "Nothing at all happens here."}
    dataset, batch = pair_batch(tok, model, [record])
    trainer = preference_trainer(model, version, tmp_path)
    fed = []
    hook = submodule(model, entry.resampler_module).register_forward_pre_hook(
        lambda module, args: fed.append(args[0].numel()))
    logps = trainer.answer_logps(model, dict(batch)).tolist()
    sft = MiniCPMVTrainer(model=model, args=trainer.args, version=entry)
    sft.router_loss = None
    for side, logp in zip(("chosen", "rejected"), logps):
        item = SupervisedDataset([to_native(getattr(to_pair(record), side))], tok, model.config, max_slice_nums=2)[0]
        with torch.no_grad():
            loss = sft.compute_loss(model, collate([item], entry.family.media), num_items_in_batch=1)
        assert float(loss) == pytest.approx(-logp, rel=1e-4), side
    hook.remove()
    pair_work, chosen_alone, rejected_alone = fed[0], fed[1], fed[2]
    assert len(fed) == 3 and pair_work == chosen_alone == rejected_alone  # the pair's frames once, as one side's


@pytest.mark.long
def test_a_dpo_run_continues_from_its_checkpoint_and_a_changed_beta_is_another_run(tiny_model_dir, sample_data, tmp_path):
    pairs = json.loads((sample_data / "pairs.json").read_text())
    flags = ["--use_lora", "true", "--save_strategy", "steps", "--save_steps", "1", "--per_device_train_batch_size", "2"]
    first = dpo_run(tiny_model_dir, sample_data, tmp_path, pairs, *flags, "--max_steps", "2")
    assert first.state.global_step == 2
    resumed = dpo_run(tiny_model_dir, sample_data, tmp_path, pairs, *flags, "--max_steps", "3",
                      "--resume_from_checkpoint", "last")
    assert resumed.state.global_step == 3 and "rewards/margins" in resumed.state.log_history[-3]
    with pytest.raises(ValueError, match="dpo_beta"):
        dpo_run(tiny_model_dir, sample_data, tmp_path, pairs, *flags, "--max_steps", "3", "--dpo_beta", "0.2",
                "--resume_from_checkpoint", "last")


@pytest.mark.long
def test_full_dpo_with_a_frozen_copy_saves_a_model_that_chats(tiny_model_dir, sample_data, tmp_path, capsys):
    """The reference kept as a frozen copy (full fine-tuning): the first loss is ln 2, the copy
    stays the starting model, and the result loads and answers through the checkpoint's chat()."""
    import chat
    from safetensors.torch import load_file

    pairs = json.loads((sample_data / "pairs.json").read_text())
    trainer = dpo_run(tiny_model_dir, sample_data, tmp_path, pairs, "--dpo_reference", "copy", "--max_steps", "2",
                      "--per_device_train_batch_size", "2")
    assert trainer.state.log_history[0]["loss"] == pytest.approx(LN_2, abs=1e-4)
    start = load_file(tiny_model_dir("2.6") / "model.safetensors")
    assert all(torch.equal(p, start[name]) for name, p in trainer.reference_model.state_dict().items())
    trained = load_file(tmp_path / "out" / "model.safetensors")
    assert any(not torch.equal(p, start[name]) for name, p in trained.items() if name.startswith("llm."))
    capsys.readouterr()
    chat.main(["--model", str(tmp_path / "out"), "--image", str(sample_data / pairs[0]["image"]), "--question",
               pairs[0]["question"], "--max_new_tokens", "6"])
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("line,reason", [
    ('{"pair": 1, "logps": [NaN, -2.0]}', "line 3: pair 1's chosen log-prob is nan: a log-probability is a finite "
                                          "number at most 0"),
    ('{"pair": 1, "logps": [-1.0, 50]}', "line 3: pair 1's rejected log-prob is 50"),
    ('{"pair": 1, "logps": [true, -2.0]}', "line 3: pair 1's chosen log-prob is True"),
    ('{"pair": 0, "logps": [-1.0, -2.0]}', "line 3: pair 0 a second time"),
])
def test_a_reference_file_line_with_a_value_no_log_prob_can_have_is_an_error(tmp_path, line, reason):
    """Issue 29.1 and 29.3: NaN, a log-prob above 0 or true/false in a line were trained on, and a
    second line for a pair silently replaced the first; a cut last line is still computed again."""
    from minicpmv_ft import reference_file

    expected = {"reference_logps": reference_file.FORMAT, "model": "m", "data": "d", "media": "i", "settings": {},
                "pairs": 2}
    path = tmp_path / "pairs.reference_logps.jsonl"
    header, first = json.dumps(expected), '{"pair": 0, "logps": [-3.0, -4.0]}'
    path.write_text("\n".join([header, first, line]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}, {reason}") + ".*delete the file and run reference_logps"):
        reference_file.read(str(path), expected)
    path.write_text("\n".join([header, first, '{"pair": 1, "lo']) + "\n")
    assert reference_file.read(str(path), expected) == ({0: (-3.0, -4.0)}, {})
