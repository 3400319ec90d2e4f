"""finetune.py end to end on the tiny models: loss falls, outputs reload with the same logits."""
import json
import logging
import math

import pytest
import torch
import transformers
from transformers import AutoModel, AutoTokenizer, TrainerCallback

from conftest import REGISTRY, VERSIONS, cpu_flags

import chat
import finetune
from dataset import SupervisedDataset, data_collator
from minicpmv_ft.errors import DataError
from minicpmv_ft.loading import load_for_inference
from minicpmv_ft.packing import PackedDataset
from minicpmv_ft.versions.family import REMOTE_CODE


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def logits_on(model, batch, version="2.6"):
    batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**REGISTRY[version].family.forward_kwargs(batch, model), attention_mask=batch["attention_mask"]).logits


@pytest.mark.long(demo_version_quick=True)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_memorises_and_output_reloads(tiny_model_dir, sample_data, shapes_full, tmp_path, version, mode):
    source = tiny_model_dir(version)
    if mode == "full":
        trainer, out = shapes_full(version)
    else:
        out = tmp_path / "out"
        trainer = finetune.train(["--model_name_or_path", str(source), "--data_path", str(sample_data / "train.json")]
                                 + cpu_flags(out, epochs=8, lr=1e-2) + ["--use_lora", "true", "--lora_r", "8",
                                                                         "--lora_alpha", "16", "--lora_dropout", "0"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) >= 6
    assert losses[-1] < losses[0] * (0.3 if mode == "full" else 0.7), losses

    entry = REGISTRY[version]
    auto_class = getattr(transformers, entry.auto_class)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    dataset = SupervisedDataset(str(sample_data / "train.json"), tokenizer, trainer.model.config, max_slice_nums=1)
    batch = dataset.collator([dataset[0], dataset[3], dataset[len(dataset) - 1]])
    trained = trainer.model.eval()
    expected = logits_on(trained, batch, version)
    if mode == "full":
        reloaded = auto_class.from_pretrained(out, trust_remote_code=True).eval()
        # the inference files: remote code and chat template as they were; the processor config
        # with the slice limit the model was trained with
        for name in [p.name for p in source.iterdir() if p.suffix in (".py", ".jinja")]:
            assert (out / name).read_text() == (source / name).read_text(), name
        for name in [p.name for p in source.iterdir() if p.name.endswith("processor_config.json")]:
            saved = json.loads((out / name).read_text())
            assert saved.get("image_processor", saved)["max_slice_nums"] == 1, name
        if entry.family is REMOTE_CODE:
            saved_tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
            assert saved_tokenizer.chat_template == tokenizer.chat_template
            assert (out / "image_processing_minicpmv.py").exists()
        source_generation = json.loads((source / "generation_config.json").read_text())
        saved_generation = json.loads((out / "generation_config.json").read_text())
        assert {k: saved_generation[k] for k in source_generation if k != "transformers_version"} == {
            k: v for k, v in source_generation.items() if k != "transformers_version"}
        if entry.chat.thinking:  # both modes of its inference work on the result
            processing, model, loaded_version, _ = load_for_inference(str(out))
            assert loaded_version is entry
            for thinking in (False, True):
                assert isinstance(chat.answer(model, processing, entry, [], "Hi", max_new_tokens=3,
                                              thinking=thinking), str)
    else:
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(auto_class.from_pretrained(source, trust_remote_code=True), out).eval()
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert set(adapter["modules_to_save"]) == {entry.resampler_module, entry.vision_module}
        assert not (out / "model.safetensors").exists()
    torch.testing.assert_close(logits_on(reloaded, batch, version), expected, rtol=1e-5, atol=1e-5)


def test_lora_trains_adapters_resampler_and_vision_only(tiny_model_dir, sample_data, tmp_path):
    args = ["--model_name_or_path", str(tiny_model_dir("2.5")), "--data_path", str(sample_data / "train.json"),
            "--use_lora", "true", "--lora_r", "4", "--max_steps", "1"] + cpu_flags(tmp_path, 1, 1e-3)
    model = finetune.train(args).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable)
    lora_layers = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable if "lora_" in n}
    assert lora_layers == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_qlora_preparation_keeps_the_embedding_output_writable(tiny, tiny_model_dir, sample_data, tmp_path):
    """Found on an H100: with QLoRA, peft's prepare_model_for_kbit_training made the embedding
    output a leaf that requires grad (for reentrant checkpointing), and the checkpoint's own
    forward writes image features into it in place: 'a view of a leaf Variable ... in-place';
    before that, making every parameter trainable failed on the 4-bit integer weights. Here the tiny model only claims to be 4-bit (bitsandbytes needs CUDA); peft takes that path."""
    from types import SimpleNamespace

    tok, _ = tiny("2.5")
    model = AutoModel.from_pretrained(tiny_model_dir("2.5"), trust_remote_code=True)
    model.is_loaded_in_4bit = True
    # and, as bitsandbytes' packed weights are, an integer parameter (requires_grad_(True) on it raises)
    model.llm.register_parameter("packed_4bit", torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8),
                                                                   requires_grad=False))
    args = finetune.parse_arguments(["--model_name_or_path", str(tiny_model_dir("2.5")), "--data_path", "x.json",
                                     "--use_lora", "true", "--lora_r", "4", "--gradient_checkpointing", "true"]
                                    + cpu_flags(tmp_path, 1, 1e-3))[2]
    qlora_args = SimpleNamespace(**{**vars(args), "q_lora": True, "trains_llm": args.trains_llm})
    model = finetune.configure_trainable(model, REGISTRY["2.5"], qlora_args).train()
    batch = data_collator([SupervisedDataset(str(sample_data / "train.json"), tok, model.config)[0]])
    labels = batch.pop("labels")
    logits = model(data=batch, attention_mask=batch["attention_mask"], use_cache=False).logits
    torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:]).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "layers.0." in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


@pytest.mark.parametrize("flags,message", [
    (["--use_lora", "true", "--tune_llm", "true"], "--use_lora true with --tune_llm true"),
    (["--use_lora", "true", "--q_lora", "true"], "--q_lora true needs a CUDA GPU"),
    (["--q_lora", "true"], "--q_lora true needs --use_lora true"),
    (["--max_slice_nums", "0"], "--max_slice_nums must be >= 1"),
    (["--packing", "true", "--group_by_length", "true"], "--packing and --group_by_length both"),
    (["--video_max_group", "7"], "--video_max_group must be 1-6"),
    (["--attn_implementation", "flash"], "--attn_implementation 'flash': choose eager, sdpa or flash_attention_2"),
    (["--attn_implementation", "flash_attention_2"], "needs a CUDA GPU and flash-attn"),
    (["--loss_kernel", "liger"], "--loss_kernel liger needs a CUDA GPU and liger-kernel"),
    # issue 8.10: these used to fail only after the weights loaded, or to "train" nothing
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing; give a positive --num_train_epochs or --max_steps"),
    (["--model_name_or_path", "/no/such/model"], "--model_name_or_path /no/such/model: no such folder"),
    (["--output_dir", "FILE"], "--output_dir .*file.txt is a file, not a folder"),
    # issue 18.14: each of these used to train wrongly or fail after the weights loaded
    (["--model_max_length", "-5"], "--model_max_length must be a positive number of tokens, got -5"),
    (["--vision_lr", "-1"], r"--vision_lr must be positive, got -1.0 \(a negative rate ascends the loss\)"),
    (["--resampler_lr", "0"], "--resampler_lr must be positive, got 0.0"),
    (["--lora_r", "0"], r"--lora_r must be >= 1 \(the adapters' rank\), got 0"),
    (["--lora_dropout", "2"], r"--lora_dropout is a probability in \[0, 1\), got 2.0"),
    (["--lora_target_modules", "q_proj("], "--lora_target_modules 'q_proj\\(' is not a regular expression"),
    (["--vision_lr", "1e-5", "--tune_vision", "false"], "--vision_lr with --tune_vision false: the vision tower is frozen"),
])
def test_bad_flags_fail_before_loading(tmp_path, flags, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as the arguments look
    flags = [str(tmp_path / "file.txt") if f == "FILE" else f for f in flags]
    argv = ["--model_name_or_path", str(tmp_path), "--data_path", "x.json",
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"] + flags
    with pytest.raises(ValueError, match=message):
        finetune.parse_arguments(argv)


def test_a_hub_id_that_cannot_be_loaded_is_one_line(tmp_path, capsys, monkeypatch):
    """Issue 18.18: a mistyped relative path that looks like org/name gave a 178-line traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.json").write_text("[]")
    with pytest.raises(SystemExit) as stopped:
        finetune.main(["--model_name_or_path", "nosuch/model", "--data_path", "d.json", "--output_dir", "out",
                       "--use_cpu", "true"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("finetune: nosuch/model: no such folder, and no model of that name could be loaded "
                               "from the hub (")
    (tmp_path / "output").mkdir()
    with pytest.raises(ValueError, match=r"^--model_name_or_path output/modle: no such folder \(output/ is a folder "
                                         r"here\)$"):
        finetune.parse_arguments(["--model_name_or_path", "output/modle", "--data_path", "d.json", "--output_dir",
                                  "out", "--use_cpu", "true"])


def test_a_full_disk_when_the_run_starts_is_one_line(tmp_path, monkeypatch):
    """Issue 18.18: the lock file's write on a full disk gave a traceback."""
    import errno

    from minicpmv_ft import run_record

    class FullDisk:
        def __init__(self, *args):
            self.handle = open(*args)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_record, "open", FullDisk, raising=False)
    with pytest.raises(ValueError, match=rf"^--output_dir {tmp_path / 'out'}: no space left on device \(.* GiB free "
                                         r"there\); free space or choose another --output_dir$"):
        with run_record.output_dir_lock(str(tmp_path / "out")):
            pass


def test_output_dir_under_a_file_fails_before_loading(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as the arguments look
    with pytest.raises(ValueError, match=r"--output_dir .*file.txt/out: .*file.txt is not a writable folder"):
        finetune.parse_arguments(["--model_name_or_path", str(tmp_path), "--data_path", "x.json",
                                  "--output_dir", str(tmp_path / "file.txt" / "out"), "--use_cpu", "true"])


def test_lora_run_is_reproducible_with_seed(tiny_model_dir, sample_data, tmp_path):
    """Issue 8.6: adapters were initialised before the Trainer seeded, so two runs differed."""
    from safetensors.torch import load_file

    saved = []
    for run in ("a", "b"):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
                        "--use_lora", "true", "--lora_r", "4", "--max_steps", "1"] + cpu_flags(tmp_path / run, 1, 1e-3))
        saved.append(load_file(tmp_path / run / "adapter_model.safetensors"))
    assert saved[0].keys() == saved[1].keys() and any("lora_A" in k for k in saved[0])
    for key in saved[0]:
        assert torch.equal(saved[0][key], saved[1][key]), key


def test_nothing_to_train_on_fails_before_weights_load(tiny_model_dir, sample_data, tmp_path, monkeypatch):
    """Issue 8.8: every sample dropped used to crash with num_samples=0 after loading the weights."""
    monkeypatch.setattr(finetune, "load_model", lambda *a: pytest.fail("weights loaded with nothing to train on"))

    with pytest.raises(DataError, match="train.json: no sample left to train on"):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
                        "--model_max_length", "10"] + cpu_flags(tmp_path, 1, 1e-3))


@pytest.mark.parametrize("flags,message", [
    (["--use_lora", "true", "--lora_target_modules", "nomatch"],
     r"--lora_target_modules 'nomatch' matches no linear layer of this model \(matched against full module names, "
     r"e.g. llm.model.layers.0.self_attn.q_proj\); the default is "),
    (["--keep_earlier_reasoning", "true"], "--keep_earlier_reasoning: MiniCPM-V 2.6 has no thinking blocks to keep"),
    (["--use_lora", "true", "--lora_modules_to_save", "embed_token"],  # issue 29.4: PEFT ignored it silently
     r"--lora_modules_to_save 'embed_token' names no module of this model \(a name matches the modules whose full "
     r"name ends with it\); did you mean 'embed_tokens'\?"),
])
def test_flags_that_need_the_model_fail_before_weights_load(tiny_model_dir, sample_data, tmp_path, monkeypatch, flags,
                                                             message):
    """Issue 18.14 / 18.19: a LoRA target matching nothing failed in PEFT after loading."""
    monkeypatch.setattr(finetune, "load_model", lambda *a: pytest.fail("weights loaded before the check"))
    with pytest.raises(ValueError, match=message):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json")]
                       + cpu_flags(tmp_path, 1, 1e-3) + flags)


def test_bad_data_fails_before_weights_load(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "q", "conversations": [{"role": "user", "content": "x"}]}]))
    monkeypatch.setattr(finetune, "load_model", lambda *a: pytest.fail("weights loaded before the data check"))

    with pytest.raises(DataError, match=r"sample 0 \(id 'q'\): no assistant turn"):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "bad.json"),
                        "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])


def test_skip_bad_samples_trains_on_the_rest_and_counts_them(tiny_model_dir, sample_data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    samples = json.loads((sample_data / "train.json").read_text())
    samples.insert(2, {"id": "lost", "image": "images/gone.png",
                       "conversations": [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]})
    data = sample_data / "with_bad.json"
    data.write_text(json.dumps(samples))
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(data), "--max_steps", "1"]
    
    with pytest.raises(DataError, match=rf"{data}, sample 2 \(id 'lost'\): image not found: .*gone.png"):
        finetune.train(base + cpu_flags(tmp_path / "a", 1, 1e-3))
    trainer = finetune.train(base + cpu_flags(tmp_path / "b", 1, 1e-3) + ["--skip_bad_samples", "true"])
    assert trainer.train_dataset.failed == [(2, "lost", f"image not found: {sample_data / 'images' / 'gone.png'}")]
    assert len(trainer.train_dataset) == len(samples) - 1
    assert "train data: 14 samples used, 0 dropped, 1 failing samples skipped" in caplog.text
    last = [r.getMessage() for r in caplog.records if r.name == "finetune"][-1]  # the run's last word
    assert last == ("train data: 1 of 15 samples were left out: 1 image not found (the log's start lists them; "
                    "check_data.py shows all)")


@pytest.mark.parametrize("version,stage,world,refused", [
    ("2.0", 3, 2, True), ("2.0", 3, 1, False), ("2.0", 2, 2, False), ("2.5", 3, 2, False),
])
def test_per_image_vision_tower_with_zero3_is_refused(tiny, version, stage, world, refused):
    """MiniCPM-V 2.0 under ZeRO-3 on several processes hangs (measured: a 2-rank CPU run
    deadlocks at the first step where the ranks hold different numbers of images)."""
    from minicpmv_ft.versions import VERSIONS

    config = tiny(version)[1].config
    args = type("Args", (), {"deepspeed": {"zero_optimization": {"stage": stage}}})()
    if refused:
        with pytest.raises(ValueError, match="runs its vision tower once per image.*ds_config_zero2.json"):
            finetune.check_version_supported(VERSIONS[version], config, args, world)
    else:
        finetune.check_version_supported(VERSIONS[version], config, args, world)


def test_2_0_revision_whose_get_input_embeddings_raises_attribute_error_trains(tiny, tiny_model_dir, sample_data,
                                                                               tmp_path, monkeypatch):
    """Some 2.0 remote-code revisions raise AttributeError instead of NotImplementedError."""
    def missing(self):
        raise AttributeError("'MiniCPMV' object has no attribute 'get_input_embeddings'")

    monkeypatch.setattr(type(tiny("2.0")[1]), "get_input_embeddings", missing)
    args = ["--model_name_or_path", str(tiny_model_dir("2.0")), "--data_path", str(sample_data / "train.json"),
            "--use_lora", "true", "--lora_r", "4", "--max_steps", "2", "--gradient_checkpointing", "true"]
    trainer = finetune.train(args + cpu_flags(tmp_path, 1, 1e-3))
    assert trainer.state.global_step == 2 and all(torch.isfinite(torch.tensor(
        [e["loss"] for e in trainer.state.log_history if "loss" in e] or [0.0])))
    assert trainer.model.get_input_embeddings() is trainer.model.base_model.model.llm.get_input_embeddings()


def test_signal_after_the_last_step_still_saves_the_finished_model(tiny_model_dir, sample_data, tmp_path, caplog):
    """Issue 8.13: a signal after the last step's check skipped the final model and logged a
    TypeError (`checkpoint-%d` with None)."""
    import os
    import signal

    from transformers import TrainerCallback

    class SignalAtTheEnd(TrainerCallback):  # runs after StopOnSignal's own step-end check
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                os.kill(os.getpid(), signal.SIGTERM)

    caplog.set_level(logging.WARNING)
    trainer = finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                              str(sample_data / "train.json"), "--max_steps", "2"] + cpu_flags(tmp_path, 1, 1e-3),
                             callbacks=[SignalAtTheEnd()])
    assert trainer.interrupted_by is None and (tmp_path / "model.safetensors").exists()
    assert f"signal 15 arrived after the last step; the finished model was saved to {tmp_path}" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the save


@pytest.mark.parametrize("strategy", [["--eval_strategy", "steps", "--eval_steps", "1000"], ["--eval_strategy", "no"]])
def test_an_eval_set_is_evaluated_at_the_end_of_a_short_run(tiny_model_dir, sample_data, tmp_path, strategy):
    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--eval_data_path", str(sample_data / "eval.json"), "--max_steps", "2"] + cpu_flags(tmp_path, 1, 1e-3)
    trainer = finetune.train(args + strategy + ["--report_to", "tensorboard", "--logging_steps", "1"])
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2]
    assert any("eval_loss" in entry for entry in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"])
    # the saved config keeps the checkpoint's special token ids (the Trainer would align them to the tokenizer)
    for name in ("config.json", "generation_config.json"):
        saved, source = (json.loads((folder / name).read_text()) for folder in (tmp_path, tiny_model_dir("2.6")))
        assert [saved.get(k) for k in SPECIAL_IDS] == [source.get(k) for k in SPECIAL_IDS], name
    # TensorBoard by default in the launchers, and the loss plot in the output folder
    assert list((tmp_path / "runs").glob("*/events.out.tfevents.*"))
    assert (tmp_path / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curves_hold_every_logged_train_and_eval_loss():
    from minicpmv_ft.loss_plot import loss_curves

    history = [{"loss": 3.0, "step": 1}, {"loss": 2.0, "step": 2}, {"eval_loss": 2.5, "step": 2},
               {"train_runtime": 1.0, "step": 2}, {"loss": 1.0, "step": 3}, {"eval_loss": 1.5, "step": 3}]
    assert loss_curves(history) == {"train": ([1, 2, 3], [3.0, 2.0, 1.0]), "eval": ([2, 3], [2.5, 1.5])}


def test_a_preference_runs_plot_has_a_panel_of_its_margins_and_accuracies(tmp_path):
    """Issue 29: the DPO run's plot had no margins or accuracies (they were logged)."""
    from PIL import Image

    from minicpmv_ft.loss_plot import PREFERENCE, curves_of, plot_loss

    sft = [{"loss": 3.0, "step": 1}, {"loss": 2.0, "step": 2}]
    dpo = [{"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1},
           {"loss": 0.5, "rewards/margins": 0.4, "rewards/accuracies": 1.0, "step": 2},
           {"eval_loss": 0.6, "eval_rewards/margins": 0.2, "eval_rewards/accuracies": 0.5, "step": 2}]
    assert curves_of(dpo, PREFERENCE) == {"train margin": ([1, 2], [0.0, 0.4]), "eval margin": ([2], [0.2]),
                                          "train accuracy": ([1, 2], [0.0, 1.0]), "eval accuracy": ([2], [0.5])}
    heights = []
    for name, history in (("sft", sft), ("dpo", dpo)):
        assert plot_loss(history, str(tmp_path / f"{name}.png"))
        heights.append(Image.open(tmp_path / f"{name}.png").size[1])
    assert heights == [500, 1000]  # a second panel


def test_a_reported_problem_is_one_line_and_debug_shows_the_traceback(tiny_model_dir, tmp_path, capsys):
    bad = [{"id": "lost", "image": "nope.png", "conversations": [{"role": "user", "content": "<image>"},
                                                                 {"role": "assistant", "content": "x"}]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "bad.json"),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"]
    with pytest.raises(SystemExit) as stopped:
        finetune.main(args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"finetune: {tmp_path / 'bad.json'}, sample 0 (id 'lost'): image not found: "
                                       f"{tmp_path / 'nope.png'}\n")
    with pytest.raises(SystemExit) as stopped:  # an argument problem found by our own checks
        finetune.main(args[:-6] + ["--output_dir", str(tmp_path / "bad.json"), "--use_cpu", "true"])
    assert stopped.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(DataError):
        finetune.main(args + ["--debug"])


def test_the_trained_slice_limit_is_saved_where_chat_reads_it(tiny_model_dir, sample_data, tmp_path):
    """Issue 9: a model trained with --max_slice_nums 2 is chatted with at 9 slices otherwise."""
    from minicpmv_ft.checkpoints import record_max_slice_nums
    from minicpmv_ft.loading import load_for_inference
    from minicpmv_ft.versions import image_settings

    common = ["--data_path", str(sample_data / "train.json"), "--max_steps", "1"]
    full, lora = tmp_path / "full", tmp_path / "lora"
    finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6"))] + common + cpu_flags(full, 1, 1e-3)
                   + ["--max_slice_nums", "2"])
    assert json.loads((full / "config.json").read_text())["slice_config"]["max_slice_nums"] == 2
    finetune.train(["--model_name_or_path", str(tiny_model_dir("2.5"))] + common + cpu_flags(lora, 1, 1e-3)
                   + ["--max_slice_nums", "3", "--use_lora", "true", "--lora_r", "4"])
    assert json.loads((lora / "minicpmv_settings.json").read_text()) == {"max_slice_nums": 3}
    for folder, expected in ((full, 2), (lora, 3)):
        _, model, version, _ = load_for_inference(str(folder))
        assert image_settings(model.config, version).max_slice_nums == expected
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_slice_nums": 9, "patch_size": 14}))
    record_max_slice_nums(str(tmp_path), 4)  # what 2.5+ chat() builds its processor from
    assert json.loads((tmp_path / "preprocessor_config.json").read_text()) == {"max_slice_nums": 4, "patch_size": 14}


def test_vision_and_resampler_learning_rates_have_their_own_param_groups(tiny_model_dir, sample_data, tmp_path):
    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--max_steps", "2"] + cpu_flags(tmp_path, 1, 1e-3) + [
        "--vision_lr", "1e-4", "--resampler_lr", "2e-4", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1"]
    trainer = finetune.train(args)
    lrs = {}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            lrs[names[id(param)].split(".")[0]] = lrs.get(names[id(param)].split(".")[0], set()) | {group["lr"]}
    assert lrs == {"vpm": {1e-4}, "resampler": {2e-4}, "llm": {1e-3}}
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged[-1]["learning_rate"] == 1e-3
    assert logged[-1]["learning_rate_vision"] == 1e-4 and logged[-1]["learning_rate_resampler"] == 2e-4
    # the checkpoint's optimizer state keeps the groups, so a resume continues with them
    state = torch.load(tmp_path / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert sorted(group["lr"] for group in state["param_groups"]) == sorted(
        group["lr"] for group in trainer.optimizer.param_groups)
    assert {group.get("module") for group in state["param_groups"]} == {None, "vpm", "resampler"}
    # issue 18.19: with a decaying schedule the module rates were logged one step ahead
    cosine = finetune.train(["cosine" if a == "constant" else a.replace(str(tmp_path), str(tmp_path / "cos"))
                             for a in args])
    logged = [e for e in cosine.state.log_history if "loss" in e]
    assert len(logged) == 2 and logged[0]["learning_rate"] > logged[1]["learning_rate"] > 0
    for entry in logged:
        assert entry["learning_rate_vision"] == pytest.approx(entry["learning_rate"] / 10, rel=1e-9)
        assert entry["learning_rate_resampler"] == pytest.approx(entry["learning_rate"] / 5, rel=1e-9)


def test_per_module_rates_refuse_a_deepspeed_optimizer_block(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="--vision_lr / --resampler_lr need the Trainer's optimizer"):
        finetune.TrainingArguments(output_dir=str(tmp_path / "out"), vision_lr=1e-5, deepspeed=str(tmp_path / "ds.json"),
                                   use_cpu=True)


def test_group_by_length_uses_the_checked_lengths_without_building_items(tiny_model_dir, sample_data, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                              str(sample_data / "train.json"), "--max_steps", "1", "--group_by_length", "true"]
                             + cpu_flags(tmp_path, 1, 1e-3))
    dataset = trainer.train_dataset
    assert dataset.lengths == [len(dataset[k]["input_ids"]) for k in range(len(dataset))]
    built = []
    original = type(dataset).__getitem__
    type(dataset).__getitem__ = lambda self, k: built.append(k) or original(self, k)
    try:
        sampler = trainer._get_train_sampler()
        order = list(sampler)
    finally:
        type(dataset).__getitem__ = original
    assert isinstance(sampler, LengthGroupedSampler) and not built
    assert sorted(order) == list(range(len(dataset)))
    assert dataset.lengths[order[0]] == max(dataset.lengths)  # the longest batch comes first (memory errors early)


@pytest.mark.long
@pytest.mark.parametrize("version,attention", [("2.0", "sdpa"), ("2.0", "eager"), ("4.5", "sdpa"), ("4.5", "eager")])
def test_packed_training_memorises_and_logs_its_packs(tiny_model_dir, sample_data, tmp_path, caplog, version,
                                                      attention):
    """A 4-D mask LLM (2.0) and a position-ids one (4.5), in both attention forms the mask takes."""
    caplog.set_level(logging.INFO)
    args = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(sample_data / "train.json"),
            "--packing", "true", "--model_max_length", "400", "--attn_implementation", attention] \
        + cpu_flags(tmp_path / "out", epochs=8, lr=6e-3) + ["--per_device_train_batch_size", "1"]
    trainer = finetune.train(args)
    assert trainer.model.llm.config._attn_implementation == attention
    packs = trainer.train_dataset
    assert isinstance(packs, PackedDataset) and len(packs) < len(packs.dataset) == len(packs.dataset.kept)
    assert f"into {len(packs)} packs of up to 400 tokens" in caplog.text
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] * 0.3, losses
    assert trainer.state.global_step == 8 * len(packs)


def test_data_loading_defaults_and_the_image_cache_in_a_run(tiny_model_dir, sample_data, tmp_path, caplog,
                                                            monkeypatch):
    caplog.set_level(logging.INFO)
    from minicpmv_ft import arguments

    monkeypatch.setattr(arguments, "check_workers", lambda: 3)  # this process's share of the cores
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as the arguments look
    _, _, args = finetune.parse_arguments(["--model_name_or_path", str(tmp_path), "--data_path", "x.json",
                                           "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (2, True)
    monkeypatch.setattr(arguments, "check_workers", lambda: 1)
    _, _, args = finetune.parse_arguments(["--model_name_or_path", str(tmp_path), "--data_path", "x.json",
                                           "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (0, False)
    cache = tmp_path / "cache"
    finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
                    "--image_cache_dir", str(cache), "--num_train_epochs", "1"] + cpu_flags(tmp_path / "out", 1, 1e-3))
    assert len(list(cache.glob("*/*.views"))) == 6  # the sample data's six image files, each once
    assert f"image cache: {cache}" in caplog.text and "image cache " + str(cache) + ": views of this data" in caplog.text


@pytest.mark.long
@pytest.mark.parametrize("version", ["2.6", "4.5"])
def test_a_tiny_video_set_is_memorised(tiny_model_dir, tmp_path, caplog, version):
    """Videos of 2.5 s (4.5: grouped three frames a group by --video_max_frames 2) with answers to
    learn; 4.5's grouped batches go to the model as one row."""
    from conftest import make_video

    caplog.set_level(logging.INFO)
    answers = ["It gets brighter.", "Nothing moves.", "A flash at the end.", "It fades to black."]
    records = []
    for k, answer in enumerate(answers):
        make_video(tmp_path / f"v{k}.mp4", frames=25 + 5 * k, fps=10, size=(48, 32))
        records.append({"video": f"v{k}.mp4", "conversations": [
            {"role": "user", "content": "<video>\nWhat happens?"}, {"role": "assistant", "content": answer}]})
    (tmp_path / "videos.json").write_text(json.dumps(records))
    args = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(tmp_path / "videos.json")] \
        + cpu_flags(tmp_path / "out", epochs=10, lr=6e-3) + ["--logging_steps", "4"]
    if version == "4.5":
        args += ["--video_max_frames", "2"]
    trainer = finetune.train(args)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] * 0.3, losses
    assert ("each micro-batch goes to the model as one row" in caplog.text) == (version == "4.5")


def test_grouped_videos_in_the_eval_set_only_are_batched_as_in_training(tiny_model_dir, sample_data, tmp_path,
                                                                        caplog):
    """Issue 18.11: the one-row batching was chosen from the training set only: two grouped 4.5
    videos in one eval batch crashed after training (the trained model lost), and a grouped
    video beside an image gave an eval_loss that depended on their order."""
    from conftest import make_video

    for k in range(2):
        make_video(tmp_path / f"v{k}.mp4", frames=25 + 10 * k, fps=10, size=(48, 32))
    image = json.loads((sample_data / "train.json").read_text())[0]
    image["image"] = str(sample_data / image["image"])
    videos = [{"video": f"v{k}.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat happens?"},
                                                       {"role": "assistant", "content": "It changes."}]} for k in range(2)]
    losses = []
    for name, order in (("forward", videos + [image]), ("reversed", [image] + videos[::-1])):
        (tmp_path / f"{name}.json").write_text(json.dumps(order))
        caplog.clear()
        caplog.set_level(logging.INFO)
        trainer = finetune.train(["--model_name_or_path", str(tiny_model_dir("4.5")), "--data_path",
                                  str(sample_data / "train.json"), "--eval_data_path", str(tmp_path / f"{name}.json"),
                                  "--max_steps", "1", "--video_max_frames", "4", "--per_device_eval_batch_size", "2"]
                                 + cpu_flags(tmp_path / name, 1, 1e-3))
        assert (tmp_path / name / "model.safetensors").is_file()
        assert "each micro-batch goes to the model as one row" in caplog.text
        losses.append([e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][-1])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_failing_final_evaluation_keeps_the_trained_model(tiny_model_dir, sample_data, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("Expected index [256, 128] to be smaller than self [64, 128]")

    monkeypatch.setattr(finetune.MiniCPMVTrainer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="Expected index"):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
                        "--eval_data_path", str(sample_data / "eval.json"), "--max_steps", "1"]
                       + cpu_flags(tmp_path, 1, 1e-3))
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["finished"] is True


@pytest.mark.parametrize("packing", [False, True])
def test_a_video_that_fails_while_training_is_skipped_and_counted(tiny_model_dir, tmp_path, caplog, packing):
    """Issue 18.13: a video cut short inside an intact container passes the default check and
    stopped training at its step even with --skip_bad_samples true."""
    from conftest import make_video

    for name in ("a", "b", "cut"):
        make_video(tmp_path / f"{name}.mp4", frames=40, fps=10, size=(48, 32), faststart=True)
    whole = (tmp_path / "cut.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    records = [{"id": name, "video": f"{name}.mp4", "conversations": [
        {"role": "user", "content": "<video>\nWhat happens?"}, {"role": "assistant", "content": "It changes."}]}
        for name in ("a", "cut", "b")]
    (tmp_path / "videos.json").write_text(json.dumps(records))
    caplog.set_level(logging.INFO)
    trainer = finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                              str(tmp_path / "videos.json"), "--skip_bad_samples", "true", "--max_steps", "3",
                              "--dataloader_num_workers", "0"] + cpu_flags(tmp_path / "out", 1, 1e-3)
                             + ["--per_device_train_batch_size", "1"] + ["--packing", "true"] * packing)
    assert trainer.state.global_step == 3
    failed = [r.getMessage() for r in caplog.records if "failed while training" in r.getMessage()]
    assert failed and "sample 1 (id 'cut')" in failed[0] and "cut.mp4" in failed[0]
    assert failed[0].endswith("failed while training, skipped (--skip_bad_samples): 1 such samples so far in this "
                              "process")
    assert len(failed) == 1  # known bad afterwards: not decoded (nor logged) again


@pytest.mark.parametrize("version,stage,world,refused", [
    ("4.5", 3, 2, True), ("4.5", 2, 2, False), ("4.5", 3, 1, False), ("2.6", 3, 2, False), ("4.6", 3, 1, True),
    ("4.7", 2, 2, False)])
def test_video_with_zero3_is_refused_where_it_would_go_wrong(tiny, tmp_path, version, stage, world, refused):
    """4.5's resampler runs once per group of frames (processes would hang); a native model's
    leaf merger once for the images and once more for the videos (its gradients would be wrong,
    one process too)."""
    from types import SimpleNamespace

    from conftest import make_video

    tok, model = tiny(version)
    make_video(tmp_path / "v.mp4", frames=12)
    data = SupervisedDataset([{"video": "v.mp4", "conversations": [{"role": "user", "content": "<video> ?"},
                                                                   {"role": "assistant", "content": "x"}]}],
                             tok, model.config, base_dir=str(tmp_path))
    args = SimpleNamespace(deepspeed={"zero_optimization": {"stage": stage}})
    if refused:
        with pytest.raises(ValueError, match="once per group of video frames; under ZeRO-3|the second call makes "
                                             "them wrong. Use ds_config_zero2.json for video data"):
            finetune.check_video_supported(REGISTRY[version], data, args, world)
    else:
        finetune.check_video_supported(REGISTRY[version], data, args, world)


def test_a_4_6_checkpoint_in_this_environment_names_the_command_for_its_own(tmp_path, capsys):
    """MiniCPM-V 4.6's classes ship inside transformers 5: one line saying how to set its environment
    up, before anything is loaded, quoting the bound of requirements-transformers5.txt (issue 29:
    it said 5.7, which 4.7 is not in)."""
    model = tmp_path / "minicpm-v-4.6"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "minicpmv4_6", "architectures":
                                                   ["MiniCPMV4_6ForConditionalGeneration"]}))
    (tmp_path / "d.json").write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--model_name_or_path", str(model), "--data_path", str(tmp_path / "d.json")]
                      + cpu_flags(tmp_path / "out", 1, 1e-3))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "is MiniCPM-V 4.6 (openbmb/MiniCPM-V-4.6, -Thinking) (model_type minicpmv4_6), whose classes ship inside " \
           "transformers >= 5.23" in err
    assert "`VENV=.venv-transformers5 REQUIREMENTS=requirements-transformers5.txt bash tools/setup_venv.sh`" in err


def test_a_full_disk_during_a_save_says_so_and_names_the_intact_checkpoint(tiny_model_dir, sample_data, tmp_path):
    """Issue 8.11: a save that runs out of space gave torch's bare zip-writer error. The write
    really fails here: checkpoint-4's optimizer.pt is a link to /dev/full (ENOSPC on every write)."""
    from transformers import TrainerCallback

    from minicpmv_ft.checkpoints import COMPLETE_MARKER, CheckpointWriteError

    class FillTheDisk(TrainerCallback):  # step ends run before that step's save
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                (tmp_path / "checkpoint-4").mkdir()
                (tmp_path / "checkpoint-4" / "optimizer.pt").symlink_to("/dev/full")

    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--max_steps", "6"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "2"]
    with pytest.raises(CheckpointWriteError, match=rf"saving in {tmp_path} failed: no space left on device\? "
                                                   rf"\(.*GiB free there now\)\. {tmp_path / 'checkpoint-2'} is the "
                                                   rf"newest complete checkpoint and is intact"):
        finetune.train(args, callbacks=[FillTheDisk()])
    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert not (tmp_path / "checkpoint-4" / COMPLETE_MARKER).exists()


def test_resume_never_continues_another_run_in_the_same_folder(tiny_model_dir, sample_data, tmp_path, caplog):
    """Issue 8.1: `last` resumed an older, finished run's newer checkpoint, trained 0 steps and
    saved the old weights. A new run into a folder holding another is refused; with
    --overwrite_output_dir it starts over, and `last` then takes only its own checkpoints."""
    import os
    import signal

    from transformers import TrainerCallback

    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(tmp_path)]
    flags = ["--use_cpu", "true", "--report_to", "none", "--max_slice_nums", "1", "--disable_tqdm", "true",
             "--per_device_train_batch_size", "2", "--seed", "0", "--logging_steps", "1"]
    finetune.train(base + flags + ["--max_steps", "4", "--learning_rate", "1e-3"])
    assert json.loads((tmp_path / "run.json").read_text())["finished"] is True
    second = base + flags + ["--max_steps", "3", "--learning_rate", "5e-3"]
    with pytest.raises(ValueError, match=rf"--output_dir {tmp_path} already holds a finished run; continue it with "
                                         "--resume_from_checkpoint last, choose another --output_dir, or pass "
                                         "--overwrite_output_dir"):
        finetune.train(second)

    class Preempt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    stopped = finetune.train(second + ["--overwrite_output_dir", "true"], callbacks=[Preempt()])
    assert stopped.interrupted_by == 15 and stopped.state.global_step == 2  # seen at the next step end
    caplog.set_level(logging.INFO)
    resumed = finetune.train(second + ["--resume_from_checkpoint", "last"])
    assert f"skipping {tmp_path / 'checkpoint-4'}: written by another run in this folder" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint-2'}: 2 steps done, training continues at step 3" in caplog.text
    assert resumed.state.global_step == 3
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"holds a run with other settings: learning_rate 0.005 \(now 0.001\)"):
        finetune.train(base + flags + ["--max_steps", "3", "--learning_rate", "1e-3", "--resume_from_checkpoint", "last"])


class RatesUsed(TrainerCallback):
    """The learning rate each step's optimizer update uses (the first group's), by step number."""

    def __init__(self):
        self.used = {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.used[state.global_step + 1] = optimizer.param_groups[0]["lr"]


def test_a_finished_run_resumed_at_its_length_trains_nothing_and_a_shorter_length_is_refused(
        tiny_model_dir, sample_data, tmp_path, caplog):
    """Issue 29.2: resuming a finished run trained one more step (the Trainer checks --max_steps
    after a step), which with a constant schedule changed the final model; a shorter
    --max_steps did the same while the log said nothing was left."""
    from safetensors.torch import load_file

    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--max_steps", "3"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "3",
                                                                  "--lr_scheduler_type", "constant", "--logging_steps",
                                                                  "1", "--use_lora", "true"]
    finetune.train(base)
    finished = load_file(tmp_path / "adapter_model.safetensors")
    marker = json.loads((tmp_path / "checkpoint-3" / "checkpoint_complete.json").read_text())
    assert marker["files"]["optimizer.pt"] == (tmp_path / "checkpoint-3" / "optimizer.pt").stat().st_size  # 29.7
    caplog.set_level(logging.INFO)
    rates = RatesUsed()
    again = finetune.train(base + ["--resume_from_checkpoint", "last"], callbacks=[rates])
    assert "is already at --max_steps 3: nothing is left to train; the final model is saved again from it" in caplog.text
    assert rates.used == {} and again.state.global_step == 3
    assert [e["step"] for e in again.state.log_history if "loss" in e] == [1, 2, 3]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved.keys() == finished.keys() and all(torch.equal(saved[k], finished[k]) for k in saved)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'checkpoint-3'} is past --max_steps 2: resume from a "
                                         "checkpoint at or before step 2, or give --max_steps 3 or more"):
        finetune.train(base[:5] + ["2"] + base[6:] + ["--resume_from_checkpoint", "last"])


@pytest.mark.parametrize("version", ["4.6"])
def test_a_resume_continues_the_relaid_schedule_and_stops_at_its_length_in_the_native_environment(
        tiny_model_dir, sample_data, tmp_path, version):
    """Issue 29.2 under transformers 5, whose training loop is another (the hooks are the same)."""
    base = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(sample_data / "train.json"),
            "--use_lora", "true"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "2",
                                                                   "--logging_steps", "1"]
    finetune.train(base + ["--max_steps", "2"])
    for steps, used in ((4, {3: 5e-4, 4: 2.5e-4}), (4, {})):  # linear over 4 steps; then nothing left
        rates = RatesUsed()
        resumed = finetune.train(base + ["--max_steps", str(steps), "--resume_from_checkpoint", "last"],
                                 callbacks=[rates])
        assert rates.used == pytest.approx(used) and resumed.state.global_step == 4


def test_a_finished_run_trains_longer_when_resumed_with_more_steps_or_epochs(tiny_model_dir, sample_data, tmp_path,
                                                                           caplog):
    """Issue 18.7: raising --max_steps or --num_train_epochs on a resume was refused as "a run
    with other settings"; another learning rate still is."""
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(tmp_path), "--use_cpu", "true",
            "--report_to", "none", "--max_slice_nums", "1", "--disable_tqdm", "true", "--learning_rate", "1e-3",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--lr_scheduler_type", "cosine"]
    finetune.train(base + ["--max_steps", "2"])
    caplog.set_level(logging.INFO)
    rates = RatesUsed()
    longer = finetune.train(base + ["--max_steps", "4", "--resume_from_checkpoint", "last"], callbacks=[rates])
    assert f"resuming from {tmp_path / 'checkpoint-2'}: 2 steps done, training continues at step 3" in caplog.text
    assert ("the run's length changed: max_steps 2 (now 4); the learning-rate schedule (cosine) is laid over the new "
            "length and continues from step 3 of it") in caplog.text
    assert longer.state.global_step == 4 and json.loads((tmp_path / "run.json").read_text())["finished"]
    assert [e["step"] for e in longer.state.log_history if "loss" in e] == [1, 2, 3, 4]
    # issue 29.2: step 3 trained at the old schedule's last rate (0: a cosine over 2 steps ends there);
    # the new schedule's, cosine over 4 steps at step 3, is 1e-3 * (1 + cos(pi * 2 / 4)) / 2
    assert rates.used == pytest.approx({3: 5e-4, 4: 1e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2})
    assert {e["step"]: e["learning_rate"] for e in longer.state.log_history if "loss" in e and e["step"] > 2} \
        == pytest.approx(rates.used)
    # by epochs: 14 samples, batches of 2 -> 7 steps an epoch
    epochs = finetune.train(base + ["--num_train_epochs", "1", "--resume_from_checkpoint", "last", "--max_steps", "-1"])
    assert epochs.state.global_step == 7
    with pytest.raises(ValueError, match=r"holds a run with other settings: learning_rate 0.001 \(now 0.002\)"):
        finetune.train([a if a != "1e-3" else "2e-3" for a in base] + ["--max_steps", "8", "--resume_from_checkpoint",
                                                                      "last"])


def test_checkpoints_whose_run_hash_included_the_length_still_resume(tiny_model_dir, sample_data, tmp_path, caplog):
    """Before issue 18.7 the run hash covered --max_steps / --num_train_epochs: such a run's
    checkpoints are still its own when run.json's identity matches."""
    import hashlib

    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--max_steps", "2"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "2"]
    finetune.train(base)
    record = json.loads((tmp_path / "run.json").read_text())
    old_hash = hashlib.sha256(json.dumps(record["identity"], sort_keys=True).encode()).hexdigest()[:16]
    (tmp_path / "run.json").write_text(json.dumps({**record, "hash": old_hash}))
    marker = tmp_path / "checkpoint-2" / "checkpoint_complete.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "run": old_hash}))
    caplog.set_level(logging.INFO)
    longer = base[:5] + ["3"] + base[6:]  # --max_steps 3
    resumed = finetune.train(longer + ["--resume_from_checkpoint", "last"])
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in caplog.text and resumed.state.global_step == 3


@pytest.mark.long
def test_a_resume_with_eval_steps_given_as_a_ratio_does_not_warn(tiny_model_dir, sample_data, tmp_path, caplog):
    """Issue 18.9: the launchers pass --eval_steps 0.1; every resume warned that 0.1 != 10."""
    import shutil

    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--eval_data_path", str(sample_data / "eval.json"), "--eval_strategy", "steps", "--eval_steps", "0.5",
            "--max_steps", "4"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "2"]
    finetune.train(args)
    shutil.rmtree(tmp_path / "checkpoint-4")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = finetune.train(args + ["--resume_from_checkpoint", "last"])
    assert resumed.state.global_step == 4
    assert "do not match the ones in the `trainer_state.json`" not in caplog.text


def test_second_run_into_a_busy_output_dir_stops_naming_the_first(tiny_model_dir, sample_data, tmp_path):
    """Issue 8.14: two runs into one folder at once both "succeeded" (the last writer won)."""
    import os

    from minicpmv_ft.run_record import output_dir_lock

    args = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "train.json"),
            "--max_steps", "1"] + cpu_flags(tmp_path / "out", 1, 1e-3)
    with output_dir_lock(str(tmp_path / "out")):  # as a run that is still training holds it
        with pytest.raises(ValueError, match=rf"--output_dir {tmp_path / 'out'} is in use by a running run "
                                             rf"\(pid {os.getpid()} on .*, started .*\)"):
            finetune.train(args)
    assert finetune.train(args).state.global_step == 1  # free again once the first run ended


@pytest.mark.parametrize("version", ["2.6", "4.6"])  # transformers 4.57 and 5 choose the folder differently
def test_a_resumed_run_goes_on_in_one_tensorboard_run(tiny_model_dir, sample_data, tmp_path, version):
    """Issue 29: a resumed run split into two TensorBoard runs (a folder per start time)."""
    base = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(sample_data / "train.json"),
            "--use_lora", "true"] + cpu_flags(tmp_path, 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "2",
                                                                    "--report_to", "tensorboard", "--logging_steps", "1"]
    finetune.train(base + ["--max_steps", "2"])
    finetune.train(base + ["--max_steps", "3", "--resume_from_checkpoint", "last"])
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert len(runs) == 1 and len(list((tmp_path / "runs" / runs[0]).glob("events.out.tfevents.*"))) == 2
