"""Issue 29, "tracebacks instead of one line": each case ends in one line naming what is wrong,
with exit status 2, before anything loads."""
import json

import pytest

import chat
import check_data
import finetune


def model_paths(tmp_path, sample_data):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    return {
        "data folder": (sample_data, "has no config.json: not a model checkpoint (give the folder of a downloaded or "
                                     "trained one, or a hub id like openbmb/MiniCPM-V-4_5)"),
        "file": (sample_data / "train.json", "is a file; give the model's folder (or a hub id like "
                                             "openbmb/MiniCPM-V-4_5)"),
        "typo": (tmp_path / "modle", "no such folder (and not a hub id like openbmb/MiniCPM-V-4_5)"),
        "adapter": (tmp_path / "adapter", "is a LoRA adapter; train on its base model, or merge it first "
                                          "(merge_lora.py) and train on the merged folder"),
    }


@pytest.mark.parametrize("case", ["data folder", "file", "typo", "adapter"])
def test_a_path_that_is_no_model_is_one_line_in_finetune_check_data_and_chat(tmp_path, sample_data, capsys, case):
    path, reason = model_paths(tmp_path, sample_data)[case]
    data = ["--data_path", str(sample_data / "train.json")]
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--model_name_or_path", str(path), *data, "--output_dir", str(tmp_path / "o"), "--use_cpu",
                       "true"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"finetune: --model_name_or_path {path}{' ' if case != 'typo' else ': '}{reason}"
    assert check_data.main(["--model_name_or_path", str(path), *data]) == 2
    assert capsys.readouterr().err.strip() == \
        f"check_data.py: --model_name_or_path {path}{' ' if case != 'typo' else ': '}{reason}"
    if case == "adapter":  # chat.py takes adapters (this one records no base)
        return
    with pytest.raises(SystemExit) as stop:
        chat.main(["--model", str(path), "--question", "Hi?"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"chat.py: --model {path}{' ' if case != 'typo' else ': '}{reason}"


def test_check_data_takes_a_pasted_training_command_and_refuses_unknown_flags_in_one_line(tiny_model_dir,
                                                                                       sample_data, capsys):
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(sample_data / "pairs.json"),
            "--num_workers", "1"]
    assert check_data.main(base + ["--method", "dpo", "--learning_rate", "1e-5", "--bf16", "true"]) == 0
    captured = capsys.readouterr()
    assert "check_data: ignoring the training options --method dpo --learning_rate 1e-5 --bf16 true (they do not " \
           "change how samples are checked)" in captured.err
    assert "OK: every pair trains as written" in captured.out
    with pytest.raises(SystemExit) as stop:
        check_data.main(base + ["--lerning_rate", "1e-5"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith("unrecognized arguments: --lerning_rate (--help lists the options)")


def test_a_usage_error_is_one_line_not_the_whole_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--model_name_or_path", "openbmb/MiniCPM-V-4_5", "--data_path", "d.json", "--output_dir",
                       str(tmp_path), "--lr_scheduler_type", "cosin"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --lr_scheduler_type/--lr-scheduler-type: invalid choice: 'cosin'" in err


def test_a_lone_surrogate_is_a_failing_sample_and_json_nested_too_deep_a_failing_file(tiny_model_dir, tmp_path,
                                                                                      capsys):
    """A \\ud800 escape was a TypeError from the tokenizer (check_data, finetune, predict); JSON nested
    100,000 levels a RecursionError."""
    import predict

    (tmp_path / "d.json").write_text('[{"id": "s", "conversations": [{"role": "user", "content": "Hi \\ud800 there"}, '
                                     '{"role": "assistant", "content": "Ok."}]}]')
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    model = ["--model_name_or_path", str(tiny_model_dir("2.6"))]
    assert check_data.main(model + ["--data_path", str(tmp_path / "d.json"), "--num_workers", "1"]) == 1
    assert f"FAILED {tmp_path / 'd.json'}, sample 0 (id 's'): turn 0 (user) holds a lone surrogate (\\ud800 at " \
           "character 3), which is not Unicode text: fix that escape in the file" in capsys.readouterr().out
    assert check_data.main(model + ["--data_path", str(tmp_path / "deep.json"), "--num_workers", "1"]) == 1
    assert f"FAILED {tmp_path / 'deep.json'}: JSON nested deeper than the reader goes (about 1000 levels)" \
           in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # predict.py: every sample skipped is an error, before the weights load
        predict.main(["--model", str(tiny_model_dir("2.6")), "--data", str(tmp_path / "d.json"), "--out",
                      str(tmp_path / "p.jsonl")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"predict.py: {tmp_path / 'd.json'}: none of its 1 samples can be asked (each listed above)"


@pytest.mark.parametrize("what", ["folder", "binary"])
def test_a_folder_or_a_binary_file_at_the_reference_files_path_is_one_line_naming_it(tmp_path, what):
    from minicpmv_ft import reference_file

    path = tmp_path / "pairs.reference_logps.jsonl"
    if what == "folder":
        path.mkdir()
        message = f"{path} is a folder, where the reference pass writes its file; move it away"
    else:
        path.write_bytes(bytes(range(256)))
        message = f"{path} is not a reference file (not UTF-8 text); delete it and run reference_logps.py again"
    with pytest.raises(ValueError) as error:
        reference_file.read(str(path), {})
    assert str(error.value) == message


def test_ctrl_c_during_the_reference_pass_keeps_its_lines_and_says_so(tiny_model_dir, sample_data, tmp_path,
                                                                      monkeypatch, capsys):
    import shutil

    import reference_logps
    from minicpmv_ft import reference_file

    shutil.copy(sample_data / "pairs.json", tmp_path / "pairs.json")
    appended = reference_file.append

    def interrupt_after_the_first_batch(handle, *args):
        appended(handle, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(reference_file, "append", interrupt_after_the_first_batch)
    with pytest.raises(SystemExit) as stop:
        reference_logps.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                              str(tmp_path / "pairs.json"), "--image_folder", str(sample_data), "--batch_size", "2",
                              "--max_slice_nums", "1"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "reference_logps: stopped by Ctrl-C; the pairs written so far are kept: run the same command again to "
        "compute the rest")
    assert len((tmp_path / "pairs.reference_logps.jsonl").read_text().splitlines()) == 3  # the header and 2 pairs


class RunsCode:
    """Unpickling this calls print: what a crafted weights file would do with worse code."""

    def __reduce__(self):
        return print, ("ran code from the weights file",)


@pytest.mark.parametrize("where", ["model", "adapter"])
def test_a_pickled_weights_file_that_names_code_is_one_line_naming_it(tiny_model_dir, sample_data, tmp_path, capsys,
                                                                      where):
    """Nothing ran before either (torch's weights_only loader refused it), but the traceback
    suggested weights_only=False; now the file is named with what to do instead."""
    import shutil

    import torch

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("2.6"), model)
    if where == "model":
        (model / "model.safetensors").unlink()
        crafted = model / "pytorch_model.bin"
    else:
        crafted = tmp_path / "adapter" / "adapter_model.bin"
        crafted.parent.mkdir()
        (crafted.parent / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    torch.save({"weight": torch.zeros(2), "hook": RunsCode()}, crafted)
    with pytest.raises(SystemExit) as stop:
        chat.main(["--model", str(crafted.parent), "--question", "Hi?"])
    assert stop.value.code == 2
    err = capsys.readouterr()
    assert "ran code" not in err.out
    assert err.err.strip().startswith(f"chat.py: {crafted} holds more than tensors (")
    assert err.err.strip().endswith("it contains, so it is not loaded. Use a checkpoint whose weights are "
                                    "safetensors, or re-save these where they came from with "
                                    "save_pretrained(..., safe_serialization=True)")
    if where == "model":
        with pytest.raises(SystemExit) as stop:
            finetune.main(["--model_name_or_path", str(model), "--data_path", str(sample_data / "train.json"),
                           "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().startswith(f"finetune: {crafted} holds more than tensors (")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has a GPU")
def test_the_launchers_bf16_default_on_a_machine_without_a_gpu_is_one_line_pointing_to_the_cpu_recipe(tmp_path,
                                                                                                     capsys):
    """README step 3 without a GPU was a 60-line bf16 traceback and torchrun's banner."""
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--model_name_or_path", "openbmb/MiniCPM-V-4_5", "--data_path", "d.json", "--output_dir",
                       str(tmp_path), "--bf16", "true"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "finetune: no CUDA GPU found, and --bf16 true (the launchers' default) needs one; on a CPU, add --use_cpu "
        "true --bf16 false (docs/training.md, \"On a CPU or a laptop\")")
