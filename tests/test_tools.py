"""merge_lora.py and chat.py on adapters trained on each tiny model."""
import io
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import chat
import finetune
import merge_lora
from conftest import REGISTRY, VERSIONS, ROOT, make_image
from dataset import SupervisedDataset
from minicpmv_ft.loading import AdapterBaseError, load_for_inference
from minicpmv_ft.versions.family import NATIVE


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """version -> (base copy, adapter folder, data file), trained for a few steps."""
    import subprocess
    import sys

    data = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(data)], check=True)
    made = {}

    def get(version):
        if version not in made:
            root = tmp_path_factory.mktemp(f"adapter-{version}")
            base = shutil.copytree(tiny_model_dir(version), root / "base")
            finetune.train(["--model_name_or_path", str(base), "--data_path", str(data / "train.json"),
                            "--output_dir", str(root / "adapter"), "--use_cpu", "true", "--report_to", "none",
                            "--save_strategy", "no", "--max_steps", "6", "--learning_rate", "1e-2",
                            "--use_lora", "true", "--lora_r", "4", "--lora_dropout", "0", "--disable_tqdm", "true",
                            "--max_slice_nums", "1"])
            made[version] = (base, root / "adapter", data / "train.json")
        return made[version]

    return get


def batch_for(tokenizer, config, data, version):
    """Three samples' batch, labels out; `tokenizer`: what load_for_inference gives (4.6: its processor)."""
    if REGISTRY[version].family is NATIVE:
        tokenizer = tokenizer.tokenizer
    ds = SupervisedDataset(str(data), tokenizer, config, max_slice_nums=1)
    batch = ds.collator([ds[0], ds[1], ds[len(ds) - 1]])
    batch.pop("labels")
    return batch


def regex_alarm(tokenizer, folder, caplog) -> str:
    """What transformers 4.57's check of a local tokenizer folder for a broken Mistral regex logs
    (it runs on every plain load of a tokenizer of over 100k tokens), our commands' filter off."""
    import logging

    logger = logging.getLogger("transformers.tokenization_utils_base")
    ours = list(logger.filters)
    for kept in ours:
        logger.removeFilter(kept)
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            type(tokenizer)._patch_mistral_regex(tokenizer, str(folder), _is_local=True)
        return caplog.text
    finally:
        for kept in ours:
            logger.addFilter(kept)


@pytest.mark.long(demo_version_quick=True)
@pytest.mark.parametrize("version", VERSIONS)
def test_merged_model_equals_adapter_model(adapters, tmp_path, caplog, version):
    entry = REGISTRY[version]
    base, adapter, data = adapters(version)
    tokenizer, peft_model, _, _ = load_for_inference(str(adapter))
    out = merge_lora.merge(str(adapter), str(tmp_path / "merged"))
    import transformers

    merged = getattr(transformers, entry.auto_class).from_pretrained(out, trust_remote_code=True).eval()
    # remote code is imported once per directory (transformers_modules.<dir>), so compare by name
    assert type(merged).__name__ == type(peft_model.get_base_model()).__name__
    saved = (transformers.AutoProcessor if entry.family is NATIVE else transformers.AutoTokenizer
             ).from_pretrained(out, trust_remote_code=True)
    assert saved.chat_template == tokenizer.chat_template
    if entry.family is not NATIVE:
        # the plain load's check of a tokenizer folder (transformers 4.57.3+, over 100k tokens: the
        # real 2.5, 2.6, 4.5) took what this environment saved for a Mistral tokenizer with a broken
        # regex and warned of "incorrect tokenization" (issue 28.6)
        assert json.loads((tmp_path / "merged" / "config.json").read_text())["transformers_version"] == \
            json.loads((base / "config.json").read_text())["transformers_version"] < "4.57.3"
        assert regex_alarm(saved, out, caplog) == ""
    batch = batch_for(tokenizer, merged.config, data, version)
    with torch.no_grad():
        expected = peft_model(**entry.family.forward_kwargs(batch, peft_model), attention_mask=batch["attention_mask"]).logits
        got = merged(**entry.family.forward_kwargs(batch, merged), attention_mask=batch["attention_mask"]).logits
    # W x + B (A x) against (W + B A) x in float32: rounding of a different order only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=5e-5)

    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert before.keys() == after.keys() and not any("lora" in k for k in after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    llm, resampler, vision = (f"{module}." for module in (entry.llm_module, entry.resampler_module, entry.vision_module))
    llm_q = {k for k in before if k.startswith(llm) and k.endswith("q_proj.weight")}
    assert llm_q and {k for k in changed if k.startswith(llm) and "q_proj" in k} == llm_q
    assert any(k.startswith(resampler) for k in changed) and any(k.startswith(vision) for k in changed)
    assert not any(k.startswith(llm) and ("mlp" in k or "embed_tokens" in k or "lm_head" in k) for k in changed)


@pytest.mark.long(demo_version_quick=True)
@pytest.mark.parametrize("version", VERSIONS)
def test_chat_answers_alike_from_adapter_and_merged_model(adapters, tmp_path, version):
    base, adapter, data = adapters(version)
    merged = merge_lora.merge(str(adapter), str(tmp_path / "merged"))
    image = make_image(tmp_path / "q.png", (500, 400))
    answers = {}
    for name, path in (("adapter", adapter), ("merged", merged)):
        out = io.StringIO()
        tok, model, version, _ = load_for_inference(str(path))
        from PIL import Image

        history = chat.converse(model, tok, version, [Image.open(image).convert("RGB")],
                                ["What is in the picture?", "And the colour?"], out=out, max_new_tokens=6)
        assert [role for role, _ in history] == ["user", "assistant", "user", "assistant"]
        answers[name] = out.getvalue()
    assert answers["adapter"] == answers["merged"]
    assert answers["adapter"].count("\n") == 2


def test_chat_command_line(adapters, tmp_path, capsys):
    base, adapter, _ = adapters("2.6")
    capsys.readouterr()  # what training the adapter printed, when this test is the first to ask for it
    image = make_image(tmp_path / "q.png", (300, 300))
    chat.main(["--model", str(adapter), "--image", image, "--question", "What?", "--max_new_tokens", "4"])
    assert capsys.readouterr().out.count("\n") == 1


def test_adapter_whose_base_moved_says_how_to_pass_base(adapters, tmp_path, capsys):
    base, adapter, _ = adapters("2.5")
    moved = tmp_path / "moved-base"
    shutil.move(str(base), moved)
    try:
        with pytest.raises(AdapterBaseError, match=rf"trained on '{base}', which is not there .*pass .* --base"):
            load_for_inference(str(adapter))
        with pytest.raises(SystemExit) as exit_info:
            chat.main(["--model", str(adapter), "--question", "hi"])
        assert exit_info.value.code == 2 and "--base" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            merge_lora.main(["--adapter", str(adapter), "--out", str(tmp_path / "m")])
        assert "pass the base model's folder" in capsys.readouterr().err
        _, model, version, used = load_for_inference(str(adapter), base=str(moved))
        assert used == str(moved) and version.name == "2.5"
    finally:
        shutil.move(str(moved), base)


def test_adapter_over_another_base_says_so(adapters, tiny_model_dir, capsys):
    """Issue 18.19: a 2.6 adapter over a 2.5 base stopped in PEFT with a size-mismatch traceback."""
    _, adapter, _ = adapters("2.6")
    other = tiny_model_dir("2.5")
    with pytest.raises(AdapterBaseError, match=rf"the adapter in {adapter} does not fit the base model {other} "
                                               r"\(MiniCPM-V 2.5\): size mismatch for .*; pass the model it was trained "
                                               "on with --base"):
        load_for_inference(str(adapter), base=str(other))
    with pytest.raises(SystemExit):
        merge_lora.main(["--adapter", str(adapter), "--base", str(other), "--out", str(adapter.parent / "m")])
    assert "does not fit the base model" in capsys.readouterr().err


@pytest.mark.parametrize("version,expected", [
    ("2.0", ("IMG", [{"role": "user", "content": "Q"}], None, "TOK")),
    ("2.5", ("IMG", [{"role": "user", "content": "Q"}], "TOK")),
    ("2.6", (None, [{"role": "user", "content": ["IMG", "Q"]}], "TOK")),
    ("4.0", (None, [{"role": "user", "content": ["IMG", "Q"]}], "TOK")),
    ("4.5", (None, [{"role": "user", "content": ["IMG", "Q"]}], "TOK")),
])
def test_chat_calls_each_versions_chat_signature(version, expected):
    """2.0: chat(image, msgs, context, tokenizer) -> tuple; 2.5: chat(image, msgs, tokenizer);
    2.6+: images inside the message content; 4.5: thinking off unless asked."""
    from minicpmv_ft.versions import VERSIONS

    calls = []

    class Recorder:
        def chat(self, *args, **kwargs):
            calls.append((args, kwargs.get("enable_thinking"), kwargs))
            return ("A", [], {}) if version == "2.0" else "A"

    assert chat.answer(Recorder(), "TOK", VERSIONS[version], ["IMG"], "Q") == "A"
    thinking = False if version == "4.5" else None
    assert [call[:2] for call in calls] == [(expected, thinking)]
    if version == "4.5":
        chat.answer(Recorder(), "TOK", VERSIONS[version], ["IMG"], "Q", thinking=True)
        assert calls[-1][1] is True
    history = [("user", "Q"), ("assistant", "A")]
    assert chat.answer(Recorder(), "TOK", VERSIONS[version], ["IMG"], "Q2", history=history) == "A"
    args = calls[-1][0]
    # chat() keeps no state: the follow-up question still sends the image with the first question
    assert args[0] == expected[0] and args[1][0] == expected[1][0] and args[1][2] == {"role": "user", "content": "Q2"}
    Recorder.config = {"max_slice_nums": 9, "slice_config": {"max_slice_nums": 9}}  # what chat() reads
    chat.answer(Recorder(), "TOK", VERSIONS[version], ["IMG"], "Q", max_slice_nums=2)
    if VERSIONS[version].chat_takes_max_slice_nums:  # config untouched: it must agree with the processor
        assert calls[-1][2]["max_slice_nums"] == 2 and Recorder.config["slice_config"]["max_slice_nums"] == 9
    else:  # 2.0 and 2.5 chat() take no such argument: their config says it
        configured = Recorder.config if VERSIONS[version].chat_takes_context else Recorder.config["slice_config"]
        assert configured["max_slice_nums"] == 2 and "max_slice_nums" not in calls[-1][2]
    if not VERSIONS[version].chat_images_in_messages:
        with pytest.raises(ValueError, match="takes one image, got 2"):
            chat.answer(Recorder(), "TOK", VERSIONS[version], ["IMG", "IMG2"], "Q")


def test_a_2_0_chat_that_takes_a_processor_is_given_the_checkpoints(monkeypatch):
    """2.0's published revision c22a36a ("adapt for transformers processing") takes its processor
    after the tokenizer: chat(image, msgs, context, tokenizer, processor, ...); it was called
    without one (TypeError: missing 1 required positional argument: 'processor')."""
    from types import SimpleNamespace

    from minicpmv_ft import remote_chat
    from minicpmv_ft.versions import VERSIONS

    calls, loaded = [], []
    monkeypatch.setattr(remote_chat, "_processor", lambda path: loaded.append(path) or "PROCESSOR")

    class Revision:
        config = SimpleNamespace(_name_or_path="/models/minicpmv2")

        def chat(self, image, msgs, context, tokenizer, processor, vision_hidden_states=None, max_new_tokens=1024,
                 sampling=True, max_inp_length=2048, **kwargs):
            calls.append((image, context, tokenizer, processor, sampling))
            return "A", [], {}

    assert chat.answer(Revision(), "TOK", VERSIONS["2.0"], ["IMG"], "Q") == "A"
    assert calls == [("IMG", None, "TOK", "PROCESSOR", False)] and loaded == ["/models/minicpmv2"]


def test_prediction_scores():
    import predict

    assert predict.exact_match("A red circle.", "red  circle") and not predict.exact_match("red", "red circle")
    assert predict.token_f1("red circle", "a red square") == pytest.approx(0.5)
    assert predict.token_f1("The blue square", "blue square.") == 1.0 and predict.token_f1("", "x") == 0.0
    result = predict.scores(["A red circle.", "blue"], ["red circle", "a green triangle"])
    assert result["samples"] == 2 and result["exact_match"] == 50.0 and result["token_f1"] == 50.0


def test_predict_writes_each_samples_prediction_as_chat_answers_it(adapters, tmp_path, capsys):
    import predict
    from minicpmv_ft.images import open_rgb

    _, adapter, data = adapters("2.6")
    eval_data = data.parent / "eval.json"
    records = json.loads(eval_data.read_text())
    code = predict.main(["--model", str(adapter), "--data", str(eval_data), "--out", str(tmp_path / "p.jsonl"),
                         "--max_new_tokens", "8"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [record["id"] for record in records]
    assert [row["reference"] for row in rows] == [record["conversations"][-1]["content"] for record in records]
    tok, model, version, _ = load_for_inference(str(adapter))
    first = records[0]
    question = first["conversations"][0]["content"].replace("<image>", "").strip()
    assert rows[0]["question"] == question
    assert rows[0]["prediction"] == chat.answer(model, tok, version, [open_rgb(str(data.parent / first["image"]))],
                                                question, max_new_tokens=8)
    em = 100 * sum(row["exact_match"] for row in rows) / len(rows)
    f1 = 100 * sum(row["f1"] for row in rows) / len(rows)
    assert (f"{eval_data}: {len(rows)} samples predicted (0 could not be asked and were skipped): "
            f"exact match {em:.1f}%, token F1 {f1:.1f}%") in capsys.readouterr().out


@pytest.mark.parametrize("version,calls_expected", [("2.5", 3), ("2.6", 1), ("4.5", 1)])
def test_answer_batch_uses_batch_inference_where_chat_takes_it(version, calls_expected):
    from minicpmv_ft.versions import VERSIONS

    calls = []

    class Recorder:
        def chat(self, image, msgs, *args, **kwargs):
            calls.append(msgs)
            return [f"A{k}" for k in range(len(msgs))] if isinstance(msgs[0], list) else "A"

    requests = [(["IMG"], "Q1", ()), ([], "Q2", ()), (["IMG"], "Q3", [("user", "Q0"), ("assistant", "A0")])]
    answers = chat.answer_batch(Recorder(), "TOK", VERSIONS[version], requests)
    assert len(calls) == calls_expected and len(answers) == 3
    if calls_expected == 1:  # one list of conversations, each as a single call would send it
        assert calls[0] == [chat.chat_messages(VERSIONS[version], *request) for request in requests]


def test_predict_in_batches_equals_one_by_one(adapters, tmp_path):
    import predict

    _, adapter, data = adapters("2.6")
    eval_data = data.parent / "eval.json"
    for size in ("1", "3"):
        predict.main(["--model", str(adapter), "--data", str(eval_data), "--out", str(tmp_path / f"p{size}.jsonl"),
                      "--max_new_tokens", "6", "--batch_size", size])
    one, batched = ([json.loads(line) for line in (tmp_path / f"p{size}.jsonl").read_text().splitlines()]
                    for size in ("1", "3"))
    assert one == batched and len(one) == len(json.loads(eval_data.read_text()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the advice is kept where a GPU could use it")
def test_cpu_runs_drop_only_the_cuda_kernel_advice(caplog):
    """transformers 5 advises CUDA kernels (causal-conv1d, flash-linear-attention) for 4.6's
    layers; on a machine without a GPU the commands drop that advice and nothing else."""
    import logging

    from minicpmv_ft.quiet import quiet_third_party

    quiet_third_party()
    logger = logging.getLogger("transformers.integrations.hub_kernels")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("`chunk_gated_delta_rule` is falling back to its reference PyTorch implementation because "
                       "`flash-linear-attention` is not installed.")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["something else"]


@pytest.mark.long
def test_a_parquet_file_named_by_a_relative_path_in_a_subfolder_works_for_every_command(tiny_model_dir, sample_data,
                                                                                       tmp_path):
    """The README's `rlaif-v/train.parquet`, from the folder above it (not this repo): its images
    were written under the relative folder and then taken from the data's folder a second time
    ("image not found: .../rlaif-v/rlaif-v/train.images/...", issue 28.5)."""
    import subprocess
    import sys

    import pyarrow
    import pyarrow.parquet

    (tmp_path / "rlaif-v").mkdir()
    pairs = json.loads((sample_data / "pairs.json").read_text())[:2]
    images = [{"bytes": (sample_data / pair["image"]).read_bytes(), "path": os.path.basename(pair["image"])}
              for pair in pairs]
    rows = [{"question": pair["question"], "chosen": pair["chosen"], "rejected": pair["rejected"], "image": image}
            for pair, image in zip(pairs, images)]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "rlaif-v" / "train.parquet")
    samples = [{"id": k, "image": image, "conversations": [{"role": "user", "content": pair["question"]},
                                                           {"role": "assistant", "content": pair["chosen"]}]}
               for k, (pair, image) in enumerate(zip(pairs, images))]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(samples), tmp_path / "rlaif-v" / "eval.parquet")
    model = str(tiny_model_dir("2.6"))
    commands = {
        "check_data.py": ["--model_name_or_path", model, "--data_path", "rlaif-v/train.parquet"],
        "reference_logps.py": ["--model_name_or_path", model, "--data_path", "rlaif-v/train.parquet"],
        "predict.py": ["--model", model, "--data", "rlaif-v/eval.parquet", "--out", "preds.jsonl",
                       "--max_new_tokens", "3"],
    }
    running = {script: subprocess.Popen([sys.executable, str(ROOT / script), *options], cwd=tmp_path,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for script, options in commands.items()}
    for script, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{script}: {err[-3000:]}"
    written = sorted(path.name for path in (tmp_path / "rlaif-v" / "train.images").iterdir())
    assert len(written) == 2 and not (tmp_path / "rlaif-v" / "rlaif-v").exists()
    reference = (tmp_path / "rlaif-v" / "train.reference_logps.jsonl").read_text().splitlines()
    assert [json.loads(line)["pair"] for line in reference[1:]] == [0, 1]
    assert [json.loads(line)["id"] for line in (tmp_path / "preds.jsonl").read_text().splitlines()] == [0, 1]
