"""Which checkpoint a resume takes, and what it says about one it cannot use (issue 8.11)."""
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from minicpmv_ft.checkpoints import COMPLETE_MARKER, resolve_resume


def checkpoint(out, step, complete=True, truncate=None):
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, path / "model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if truncate:
        data = (path / truncate).read_bytes()
        (path / truncate).write_bytes(data[: len(data) // 2])
    if complete:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


def test_a_checkpoint_that_cannot_be_read_is_skipped_by_last_and_refused_by_name(tmp_path, caplog):
    good = checkpoint(tmp_path, 2)
    torn = checkpoint(tmp_path, 4, truncate="model.safetensors")  # marker written, then the disk filled up
    bad_json = checkpoint(tmp_path, 6, truncate="trainer_state.json")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("last", str(tmp_path)) == str(good)
    assert f"skipping {bad_json}: trainer_state.json cannot be read (JSONDecodeError" in caplog.text
    assert f"skipping {torn}: model.safetensors cannot be read (SafetensorError" in caplog.text
    with pytest.raises(ValueError, match=rf"--resume_from_checkpoint {torn}: model.safetensors cannot be read .*; "
                                         rf"use {good} or 'last'"):
        resolve_resume(str(torn), str(tmp_path))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "global_step4/mp_rank_00_model_states.pt"])
def test_a_resume_file_cut_after_the_marker_is_passed_over_with_a_line(tmp_path, caplog, name):
    """Issue 29.7: a cut optimizer.pt (or scheduler / RNG / DeepSpeed file) under a completion
    marker was chosen by `last` and crashed the resume. The marker records every file's size; a
    marker written before that still catches a torch file whose archive directory is gone."""
    from minicpmv_ft.checkpoints import file_sizes

    good = checkpoint(tmp_path, 2)
    cut = checkpoint(tmp_path, 4, complete=False)
    for file in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "global_step4/mp_rank_00_model_states.pt"):
        (cut / file).parent.mkdir(exist_ok=True)
        torch.save({"state": torch.ones(256)}, cut / file)
    (cut / COMPLETE_MARKER).write_text(json.dumps({"global_step": 4, "files": file_sizes(str(cut))}))
    whole = (cut / name).read_bytes()
    (cut / name).write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("last", str(tmp_path)) == str(good)
    assert f"skipping {cut}: {name} has {len(whole) // 2} bytes, {len(whole)} when it was written (cut?)" in caplog.text
    (cut / COMPLETE_MARKER).write_text("{}")  # a marker from before the sizes
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("last", str(tmp_path)) == str(good)
    assert f"skipping {cut}: {name} cannot be read (BadZipFile" in caplog.text


def test_a_missing_checkpoint_is_not_called_interrupted(tmp_path):
    good = checkpoint(tmp_path, 2)
    with pytest.raises(ValueError, match=rf"--resume_from_checkpoint /nonexistent: no such folder; use {good} or 'last'"):
        resolve_resume("/nonexistent", str(tmp_path))
    with pytest.raises(ValueError, match=rf"/nonexistent: no such folder; there is no complete checkpoint in {tmp_path / 'x'}"):
        resolve_resume("/nonexistent", str(tmp_path / "x"))
    assert resolve_resume(str(good), str(tmp_path)) == str(good)
