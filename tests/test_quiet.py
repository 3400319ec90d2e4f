"""Issue 18.9: library warnings that are false alarms for our users are dropped by our commands
(minicpmv_ft/quiet.py), each shown first to be what the library really says."""
import json
import logging
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModel, AutoTokenizer

from conftest import ROOT
from minicpmv_ft import quiet


def unquiet():
    for name, _ in quiet.FALSE_ALARMS:
        logger = logging.getLogger(name)
        for kept in [f for f in logger.filters if isinstance(f, quiet._Without)]:
            logger.removeFilter(kept)


def test_2_0_generation_mixin_and_mistral_regex_alarms_are_dropped(tiny_model_dir, tmp_path, caplog):
    """The regex alarm: a tokenizer folder whose config.json says it was saved by a 4.57.3+ (our
    results keep their source's version, but a checkpoint saved by other tools says so)."""
    folder = tiny_model_dir("2.0")
    tokenizer_folder = tmp_path / "saved-by-4.57.6"
    shutil.copytree(tiny_model_dir("2.6"), tokenizer_folder)
    config = json.loads((tokenizer_folder / "config.json").read_text())
    (tokenizer_folder / "config.json").write_text(json.dumps({**config, "transformers_version": "4.57.6"}))

    def provoke():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            AutoModel.from_pretrained(folder, trust_remote_code=True)
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, trust_remote_code=True)
            type(tokenizer)._patch_mistral_regex(tokenizer, str(tokenizer_folder), _is_local=True)  # >100k tokens only
        return caplog.text

    unquiet()
    noisy = provoke()
    assert "has generative capabilities, as `prepare_inputs_for_generation` is explicitly defined" in noisy
    assert "with an incorrect regex pattern" in noisy
    quiet.quiet_third_party()
    quieted = provoke()
    assert "generative capabilities" not in quieted and "incorrect regex" not in quieted


@pytest.mark.long
def test_slow_image_processor_advice_is_dropped(tiny_model_dir):
    """Logged once per process: each case runs in its own."""
    load = f"from transformers import AutoProcessor; AutoProcessor.from_pretrained({str(tiny_model_dir('2.6'))!r}, " \
           "trust_remote_code=True)"
    for prefix, shown in (("", True), ("from minicpmv_ft.quiet import quiet_third_party; quiet_third_party(); ", False)):
        done = subprocess.run([sys.executable, "-c", prefix + load], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert ("Using a slow image processor" in done.stderr) == shown


def test_deepspeeds_deprecated_gather_warning_is_dropped():
    import warnings

    import torch.distributed

    # what torch says when DeepSpeed's ZeRO gathers call it
    message = torch.distributed.all_gather_into_tensor.__deprecated__
    assert message.startswith("`torch.distributed.all_gather_into_tensor` is deprecated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.quiet_third_party()
        warnings.warn(message, FutureWarning)
        warnings.warn("another FutureWarning", FutureWarning)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]
