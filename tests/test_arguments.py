"""One declaration of the arguments: every option says whether it changes the trained weights (the
run identity a resume must match), and check_data.py parses the data flags as finetune.py does."""
import dataclasses
import json
import re

import pytest
import transformers

from conftest import make_video

import check_data
import finetune
from minicpmv_ft import arguments
from minicpmv_ft.run_record import check_new_run, write_run


def declared_here(cls) -> set[str]:
    """The fields a class of ours declares itself (not those it inherits from transformers)."""
    return set(vars(cls).get("__annotations__", {}))


def test_every_option_of_ours_declares_its_role_and_the_lists_come_from_the_roles():
    """A new option without a role (a new encoding option left out of the reference file's
    header, a result-changing one a resume would not check) fails here."""
    ours = declared_here(arguments.ModelArguments) | declared_here(arguments.DataArguments) \
        | declared_here(arguments.TrainingArguments)
    roles = {option.name: option.metadata.get("role") for cls in (arguments.ModelArguments, arguments.DataArguments,
                                                                  arguments.TrainingArguments)
             for option in dataclasses.fields(cls) if option.name in ours}
    assert sorted(name for name, role in roles.items() if role not in arguments.ROLES) == []
    classified = [*arguments.RESULT_ARGUMENTS, *arguments.FINGERPRINTED_FILES, *arguments.RUN_NEUTRAL_ARGUMENTS]
    assert sorted(ours - set(classified)) == [] and len(classified) == len(set(classified))
    theirs = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert sorted(set(arguments.TRANSFORMERS_RESULT_ARGUMENTS) - (theirs - ours)) == [], "not a transformers field"
    assert set(arguments.ENCODING_OPTIONS) == {name for name, role in roles.items() if role == arguments.ENCODING}
    assert set(arguments.ENCODING_OPTIONS) <= set(arguments.RESULT_ARGUMENTS)
    assert "max_slice_nums" in arguments.ENCODING_OPTIONS and "dpo_beta" in arguments.DPO_ARGUMENTS


def test_the_reference_files_header_holds_every_encoding_option(tiny_model_dir, sample_data, tmp_path):
    from types import SimpleNamespace

    from minicpmv_ft import reference_file

    data_args = SimpleNamespace(**{name: f"value of {name}" for name in arguments.ENCODING_OPTIONS})
    dataset = SimpleNamespace(media_paths=lambda: [], references=[None, None])
    header = reference_file.header(str(tiny_model_dir("2.6")), str(sample_data / "pairs.json"), data_args, dataset)
    assert header["settings"] == {name: f"value of {name}" for name in arguments.ENCODING_OPTIONS}


def parse(tmp_path, *extra):
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "config.json").write_text("{}")  # the arguments ask only that the model folder has one
    return finetune.parse_arguments(["--model_name_or_path", str(tmp_path), "--data_path", str(tmp_path / "d.json"),
                                     "--output_dir", str(tmp_path / "out"), "--use_cpu", "true",
                                     "--report_to", "none", *extra])


def test_the_identity_holds_every_result_argument_and_the_data_files(tmp_path):
    identity = arguments.run_identity(*parse(tmp_path))
    assert set(identity) == set(arguments.RESULT_ARGUMENTS) | set(arguments.FINGERPRINTED_FILES.values())
    assert identity["eval_data"] is None and len(identity["data"]) == 64
    assert identity["lr_scheduler_type"] == "linear"  # the enum's value, as run.json stores it
    json.dumps(identity)  # run.json holds it


@pytest.mark.parametrize("flags,named", [
    (["--packing", "true"], "packing False (now True)"),
    (["--group_by_length", "true"], "group_by_length False (now True)"),
    (["--video_fps", "2"], "video_fps None (now 2.0)"),
    (["--video_max_frames", "8"], "video_max_frames None (now 8)"),
    (["--data_format", "sharegpt"], "data_format 'auto' (now 'sharegpt')"),
    (["--image_folder", "."], "image_folder None (now '.')"),
    (["--lora_r", "8"], "lora_r 64 (now 8)"),
])
def test_a_resume_with_a_result_argument_switched_is_refused_naming_it(tmp_path, flags, named):
    """Issue 19: resuming with --packing (or a --video_* setting, ...) switched was the same run."""
    write_run(str(tmp_path / "out"), arguments.run_identity(*parse(tmp_path)), finished=False)
    with pytest.raises(ValueError, match=re.escape(f"holds a run with other settings: {named}. Resume with the same")):
        check_new_run(str(tmp_path / "out"), arguments.run_identity(*parse(tmp_path, *flags)), resuming=True,
                      overwrite=False)


def test_a_resume_with_other_eval_data_is_refused(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    write_run(str(tmp_path / "out"), arguments.run_identity(*parse(tmp_path, "--eval_data_path",
                                                                   str(tmp_path / "e.json"))), finished=False)
    (tmp_path / "e.json").write_text("[ ]")
    with pytest.raises(ValueError, match=r"holds a run with other settings: eval_data '[0-9a-f]{64}' \(now "):
        check_new_run(str(tmp_path / "out"), arguments.run_identity(
            *parse(tmp_path, "--eval_data_path", str(tmp_path / "e.json"))), resuming=True, overwrite=False)


def test_a_run_recorded_before_an_argument_joined_the_identity_still_resumes(tmp_path):
    """run.json written when the identity lacked group_by_length: not compared, not refused."""
    identity = arguments.run_identity(*parse(tmp_path))
    write_run(str(tmp_path / "out"), {k: v for k, v in identity.items() if k != "group_by_length"}, finished=False)
    check_new_run(str(tmp_path / "out"), identity, resuming=True, overwrite=False)


def test_check_data_parses_every_model_and_data_flag_as_finetune_does(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    (tmp_path / "cache").mkdir()
    flags = ["--llm_type", "2.6", "--eval_data_path", str(tmp_path / "e.json"), "--data_format", "messages",
             "--image_folder", str(tmp_path), "--max_slice_nums", "3", "--model_max_length", "777",
             "--skip_bad_samples", "--verify_images", "--image_cache_dir", str(tmp_path / "cache"), "--video_fps", "2.5",
             "--video_max_frames", "9", "--video_max_group", "2", "--video_max_slice_nums", "1",
             "--keep_earlier_reasoning", "true", "--attn_implementation", "eager"]
    model_args, data_args, _ = parse(tmp_path, *flags)
    checked_model, checked_data, _ = check_data.parse_args(
        ["--model_name_or_path", str(tmp_path), "--data_path", str(tmp_path / "d.json"), *flags])
    assert (checked_model, checked_data) == (model_args, data_args)
    defaults = {f.name: f.default for f in dataclasses.fields(arguments.DataArguments)}
    assert all(getattr(data_args, name) != default for name, default in defaults.items() if name != "data_path"), \
        "the flags above set every data argument"


def test_check_data_samples_videos_with_the_video_flags(tiny_model_dir, tmp_path):
    """check_data lacked --video_*: with them it checked other frames than training trains on."""
    make_video(tmp_path / "clip.mp4", frames=50, fps=10)  # 5 s: 5 frames at the 2.6 default of 1 a second
    sample = {"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                     {"role": "assistant", "content": "x"}]}
    (tmp_path / "d.json").write_text(json.dumps([sample]))
    frames = {}
    for flags in ([], ["--video_max_frames", "2"], ["--video_fps", "0.5"]):
        assert check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                                str(tmp_path / "d.json"), "--num_workers", "1", "--json", str(tmp_path / "r.json"),
                                *flags]) == 0
        frames[" ".join(flags)] = json.loads((tmp_path / "r.json").read_text())["files"][0]["videos"]["frames"]["max"]
    assert frames == {"": 5, "--video_max_frames 2": 2, "--video_fps 0.5": 3}


@pytest.mark.parametrize("flags,message", [
    (["--vision_lr", "nan"], "--vision_lr nan: give a finite number"),
    (["--resampler_lr", "inf"], "--resampler_lr inf: give a finite number"),
    (["--dpo_beta", "nan"], "--dpo_beta nan: give a finite number"),
    (["--dpo_sft_weight", "nan"], "--dpo_sft_weight nan: give a finite number"),
    (["--max_grad_norm", "nan"], "--max_grad_norm nan: give a finite number"),
    (["--learning_rate", "nan"], "--learning_rate nan: give a finite number"),
    (["--learning_rate", "-1"], "--learning_rate must be 0 or more, got -1.0"),
    (["--weight_decay", "-1"], "--weight_decay must be 0 or more, got -1.0"),
    (["--video_fps", "inf"], "--video_fps inf: give a finite number"),
])
def test_a_number_that_is_not_finite_or_below_zero_is_refused_before_anything_loads(tmp_path, flags, message):
    """Issue 29.1 (first step): NaN passed every later check and trained a NaN model with exit 0."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(tmp_path, *flags)


@pytest.mark.parametrize("flags,message", [
    (["--report_to", "wandb"], "--report_to wandb: its package is not installed in this environment (pip install "
                               "wandb); installed: tensorboard"),
    (["--report_to", "tensorbord"], "--report_to tensorbord: not a logger the Trainer knows (one of none, azure_ml,"),
    (["--optim", "adamw_bnb_8bit"], "--optim adamw_bnb_8bit: "),
    (["--warmup_ratio", "2"], "--warmup_ratio is the share of the steps that warm up, 0-1; got 2.0"),
    (["--deepspeed", "ds_config_zero4.json"], "--deepspeed ds_config_zero4.json: no such file (this project's: "
                                              "ds_config_zero2.json, ds_config_zero3.json)"),
    (["--save_steps", "0"], "--save_steps 0 would save no checkpoint until the end; give a number of steps, or "
                            "--save_strategy no"),
])
def test_an_option_the_trainer_would_fail_on_after_loading_is_one_line_before(tmp_path, capsys, flags, message):
    """Issue 29: --report_to wandb and --optim adamw_bnb_8bit without their packages failed after
    the weights loaded; --warmup_ratio 2 and a missing --deepspeed file were tracebacks of the
    Trainer's checks; --save_steps 0 saved nothing until the end, silently."""
    import finetune

    with pytest.raises(SystemExit) as stop:
        finetune.main(["--model_name_or_path", "openbmb/MiniCPM-V-4_5", "--data_path", str(tmp_path / "d.json"),
                       "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
