"""Issue 29.6: a sample that fails only while training (an image damaged inside an intact file:
the default check reads its ends) stopped the run at that step with nothing saved. Now the run
saves a complete checkpoint of the steps done, names the sample, and continues from it once the
file is fixed or with --skip_bad_samples; the skip works for preference pairs and the
reference pass too."""
import json
import logging
import shutil

import pytest
from transformers import TrainerCallback

from conftest import cpu_flags, make_image

import finetune
from minicpmv_ft.checkpoints import COMPLETE_MARKER
from minicpmv_ft.errors import DataError


def damage(path):
    """Zeroes a PNG's pixel data, keeping its header and end marker (what the default check reads)."""
    whole = bytearray(path.read_bytes())
    whole[40:-12] = bytes(len(whole) - 52)
    path.write_bytes(bytes(whole))


class DamageAfter(TrainerCallback):
    """Damages `paths` when step `step` ends (the files were fine when the data was checked)."""

    def __init__(self, step, paths):
        self.step, self.paths = step, paths

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            for path in self.paths:
                damage(path)


@pytest.fixture
def own_data(sample_data, tmp_path):
    shutil.copytree(sample_data / "images", tmp_path / "images")
    shutil.copy(sample_data / "train.json", tmp_path / "train.json")
    shutil.copy(sample_data / "pairs.json", tmp_path / "pairs.json")
    return tmp_path


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_sample_failing_while_training_stops_with_a_checkpoint_that_resumes(tiny_model_dir, own_data, tmp_path,
                                                                             caplog, workers):
    images = sorted((own_data / "images").glob("*.png"))
    kept = {path: path.read_bytes() for path in images}
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(own_data / "train.json"),
            "--max_steps", "7", "--use_lora", "true", "--dataloader_num_workers", workers] \
        + cpu_flags(tmp_path / "out", 1, 1e-3) + ["--save_strategy", "steps", "--save_steps", "5"]
    with pytest.raises(ValueError) as stopped:
        finetune.train(base, callbacks=[DamageAfter(2, images)])
    message = str(stopped.value)
    assert f"{own_data / 'train.json'}, sample " in message and "cannot read image" in message
    step = int(message.split("checkpoint-")[1].split(" ")[0])
    assert 2 <= step < 7 and message.endswith(
        f"training stopped there, checkpoint-{step} holds the {step} steps done: fix the file, or add "
        "--skip_bad_samples, and continue with --resume_from_checkpoint last")
    assert (tmp_path / "out" / f"checkpoint-{step}" / COMPLETE_MARKER).exists()
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()  # no final model: the run is not done
    for path, content in kept.items():  # the files fixed: it continues from there to the end
        path.write_bytes(content)
    caplog.set_level(logging.INFO)
    resumed = finetune.train(base + ["--resume_from_checkpoint", "last"])
    assert f"checkpoint-{step}: {step} steps done" in caplog.text and resumed.state.global_step == 7
    assert json.loads((tmp_path / "out" / "run.json").read_text())["finished"]


def test_a_run_stopped_on_a_failing_sample_continues_with_skip_bad_samples(tiny_model_dir, own_data, tmp_path, caplog):
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(own_data / "train.json"),
            "--max_steps", "7", "--use_lora", "true", "--dataloader_num_workers", "0"] \
        + cpu_flags(tmp_path / "out", 1, 1e-3)
    with pytest.raises(ValueError, match=r"training stopped there, checkpoint-\d holds the \d steps? done"):
        finetune.train(base, callbacks=[DamageAfter(2, [own_data / "images" / "red_circle.png"])])
    caplog.set_level(logging.INFO)
    resumed = finetune.train(base + ["--resume_from_checkpoint", "last", "--skip_bad_samples", "true"])
    assert resumed.state.global_step == 7
    assert "red_circle.png" in caplog.text and "failed and skipped" in caplog.text  # the resumed run's check finds it


def damaged_pairs(folder, broken=2, count=4):
    """`count` pairs on 300x300 images; pair `broken`'s image is damaged inside its pixel data,
    which the default check (header and end marker) does not see."""
    pairs = []
    for k in range(count):
        make_image(folder / f"{k}.png", (300, 300), seed=k)
        pairs.append({"id": f"p{k}", "image": f"{k}.png", "question": "What is it?", "chosen": f"Shape {k}.",
                      "rejected": "Nothing."})
    whole = bytearray((folder / f"{broken}.png").read_bytes())
    whole[2000:2400] = bytes(400)
    (folder / f"{broken}.png").write_bytes(bytes(whole))
    (folder / "pairs.json").write_text(json.dumps(pairs))
    return folder / "pairs.json"


def test_preference_pairs_failing_while_training_stop_with_a_checkpoint_or_are_skipped(tiny_model_dir, tmp_path,
                                                                                      caplog):
    data = damaged_pairs(tmp_path)
    base = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(data), "--method", "dpo",
            "--use_lora", "true", "--dataloader_num_workers", "0"] + cpu_flags(tmp_path / "out", 1, 1e-3) \
        + ["--per_device_train_batch_size", "1"]
    with pytest.raises(ValueError, match=rf"{data}, sample 2 \(id 'p2'\): cannot read image .*2.png.*; training "
                                         "stopped there"):
        finetune.train(base)
    caplog.set_level(logging.WARNING)
    trained = finetune.train(base + ["--skip_bad_samples", "true", "--output_dir", str(tmp_path / "skipped")])
    assert trained.state.global_step == 4  # 4 pairs served: the broken one's place taken by the next readable
    assert trained.train_dataset.failed_in_training.keys() == {2}
    assert "failed while training, skipped (--skip_bad_samples): 1 such pairs so far" in caplog.text


def test_the_reference_pass_stops_at_a_failing_pair_or_skips_it_and_training_skips_it_too(tiny_model_dir, tmp_path,
                                                                                          caplog):
    import reference_logps
    from minicpmv_ft import reference_file

    data = damaged_pairs(tmp_path)
    options = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(data), "--max_slice_nums", "1"]
    with pytest.raises(SystemExit):
        reference_logps.main(options + ["--batch_size", "3"])
    lines = reference_file.reference_path(str(data))
    assert [json.loads(line).get("pair") for line in open(lines)][1:] == []  # the failing batch wrote nothing
    reference_logps.main(options + ["--skip_bad_samples", "true"])
    written = [json.loads(line) for line in open(lines)][1:]
    assert [entry["pair"] for entry in written] == [0, 1, 3, 2] and written[3]["failed"].startswith("cannot read image")
    train = options + ["--method", "dpo"] + cpu_flags(tmp_path / "out", 1, 1e-3) + ["--max_steps", "1"]
    with pytest.raises(DataError, match=rf"sample 2 \(id 'p2'\): cannot read image .* \(found by the reference pass, "
                                        rf"{lines}\): fix the file and run reference_logps.py again, or add "
                                        "--skip_bad_samples"):
        finetune.train(train)
    caplog.set_level(logging.WARNING)
    trainer = finetune.train(train + ["--skip_bad_samples", "true", "--output_dir", str(tmp_path / "skipped")])
    assert trainer.train_dataset.kept == [0, 1, 3] and trainer.state.global_step == 1
    assert "1 pairs failed in the reference pass, skipped (--skip_bad_samples), e.g. pair 2 (id 'p2')" in caplog.text


@pytest.mark.parametrize("version", ["4.6"])
def test_a_native_runs_failing_sample_stops_with_a_checkpoint(tiny_model_dir, own_data, tmp_path, version):
    """The same stop under transformers 5's training loop."""
    base = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(own_data / "train.json"),
            "--max_steps", "7", "--use_lora", "true", "--dataloader_num_workers", "0"] \
        + cpu_flags(tmp_path / "out", 1, 1e-3)
    with pytest.raises(ValueError, match=r"cannot read image .*; training stopped there, checkpoint-(\d) holds"):
        finetune.train(base, callbacks=[DamageAfter(2, sorted((own_data / "images").glob("*.png")))])
    saved = [path.name for path in (tmp_path / "out").glob("checkpoint-*")]
    assert len(saved) == 1 and (tmp_path / "out" / saved[0] / COMPLETE_MARKER).exists()
