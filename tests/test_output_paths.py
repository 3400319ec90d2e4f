"""Issue 29.5: an output path that is one of the command's inputs was written over (the base
model's weights, the data folder's README, the data file truncated to 0 bytes); now refused in
one line before anything is written."""
import json
import shutil

import pytest

from conftest import cpu_flags

import finetune
import merge_lora
import predict


def listing(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("target,what", [("model", "the model's folder (--model_name_or_path)"),
                                         ("data", "the folder of --data_path")])
def test_training_into_its_own_model_or_data_folder_is_refused(tiny_model_dir, sample_data, tmp_path, monkeypatch,
                                                               capsys, target, what):
    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(tiny_model_dir("2.6"), model)
    data.mkdir()
    shutil.copy(sample_data / "train.json", data / "train.json")
    (data / "README.md").write_text("the dataset's card\n")
    before = {folder: listing(folder) for folder in (model, data)}
    monkeypatch.setattr(finetune, "load_model", lambda *a: pytest.fail("weights loaded"))
    output = {"model": model, "data": data}[target]
    argv = ["--model_name_or_path", str(model), "--data_path", str(data / "train.json"), "--image_folder",
            str(sample_data), "--use_lora", "true"] + cpu_flags(output, 1, 1e-3)
    with pytest.raises(SystemExit) as stop:
        finetune.main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--output_dir {output} is {what}: the outputs would overwrite its files; choose another folder")
    assert {folder: listing(folder) for folder in (model, data)} == before


def test_merging_into_the_base_or_the_adapter_is_refused(tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir("2.6"), base)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    for out, what in ((base, "the base model's folder"), (adapter, "the adapter's folder (--adapter)")):
        with pytest.raises(SystemExit) as stop:
            merge_lora.main(["--adapter", str(adapter), "--out", str(out) + "/"])
        assert stop.value.code == 2
    before = listing(base)
    with pytest.raises(ValueError, match=f"--out {base} is the base model's folder: the outputs would overwrite"):
        merge_lora.merge(str(adapter), str(base))
    assert listing(base) == before


@pytest.mark.parametrize("out,message", [
    ("d.json", "--out {tmp}/d.json is the --data file: writing it would erase it; choose another file"),
    ("", "--out {tmp} is a folder; give a file name (e.g. {tmp}/predictions.jsonl)"),
])
def test_predicting_into_its_own_data_file_or_a_folder_is_refused(tiny_model_dir, tmp_path, capsys, out, message):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": 0, "conversations": [{"role": "user", "content": "Hi?"},
                                                            {"role": "assistant", "content": "Hi."}]}]))
    before = data.read_bytes()
    with pytest.raises(SystemExit) as stop:
        predict.main(["--model", str(tiny_model_dir("2.6")), "--data", str(data), "--out", str(tmp_path / out)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "predict.py: " + message.format(tmp=tmp_path)
    assert data.read_bytes() == before
