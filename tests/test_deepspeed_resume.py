"""A DeepSpeed checkpoint is checked with weights_only=True before DeepSpeed unpickles it with
weights_only=False (issue 8.15)."""
import os

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from minicpmv_ft.deepspeed_resume import check_deepspeed_checkpoint


class RunsCode:
    """What a crafted checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def deepspeed_checkpoint(path, extra=None, tag="global_step2"):
    (path / "global_step2").mkdir(parents=True)
    (path / "latest").write_text(tag)
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19"}, path / "global_step2" / "mp_rank_00_model_states.pt")
    optim = {"optimizer_state_dict": {"loss_scaler": DynamicLossScaler(2.0**16, 1000, 1, 2, False), "zero_stage": ZeroStageEnum.gradients,
                                      "param_slice_mappings": [{"w": fragment_address(numel=2, start=0)}]}}
    optim.update(extra or {})
    torch.save(optim, path / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return path


def test_deepspeed_own_state_passes(tmp_path):
    check_deepspeed_checkpoint(str(deepspeed_checkpoint(tmp_path / "checkpoint-2")))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = deepspeed_checkpoint(tmp_path / "checkpoint-2", extra={"hook": RunsCode(marker)})
    with pytest.raises(ValueError, match=r"zero_pp_rank_0_mp_rank_00_optim_states.pt: refusing to resume: .*"
                                         r"GLOBAL posix.system"):
        check_deepspeed_checkpoint(str(checkpoint))
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["../elsewhere", "/tmp", ""])
def test_latest_must_name_a_folder_inside_the_checkpoint(tmp_path, tag):
    (tmp_path / "elsewhere").mkdir()
    checkpoint = deepspeed_checkpoint(tmp_path / "checkpoint-2", tag=tag)
    with pytest.raises(ValueError, match="not a folder of this checkpoint"):
        check_deepspeed_checkpoint(str(checkpoint))


def test_a_checkpoint_without_deepspeed_state_is_named(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match="no 'latest' file, so this is not a DeepSpeed checkpoint"):
        check_deepspeed_checkpoint(str(tmp_path / "checkpoint-2"))
