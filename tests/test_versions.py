"""Version detection and config field locations come from the one table."""
import pytest

from conftest import LLM_TYPES
from minicpmv_ft.versions import VERSIONS, VersionError, detect_version, image_settings, llm_config_family


@pytest.mark.parametrize("llm_type", LLM_TYPES)
def test_detected_from_checkpoint(tiny, llm_type):
    tok, model = tiny(llm_type)
    assert detect_version(model.config, tok).llm_type == llm_type
    assert llm_config_family(model.config) == VERSIONS[llm_type].llm_config_family


def test_tokenizer_without_any_chat_tokens(tiny):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    config = type("Config", (), {})()
    with pytest.raises(VersionError, match="cannot tell the chat format of this checkpoint.*pass --llm_type"):
        detect_version(config, bare)
    assert detect_version(config, bare, "llama3").llm_type == "llama3"


@pytest.mark.parametrize("llm_type,expected", [
    ("minicpm", (64, 14, 9, 448, False, "wrapped", "chw")),
    ("llama3", (96, 14, 9, 448, False, "wrapped", "patch_major")),
    ("qwen", (64, 14, 9, 448, True, "per_slice", "patch_major")),
])
def test_image_settings_read_from_each_versions_config(tiny, llm_type, expected):
    config = tiny(llm_type)[1].config
    s = image_settings(config, VERSIONS[llm_type])
    assert (s.query_num, s.patch_size, s.max_slice_nums, s.scale_resolution, s.use_image_id,
            s.placeholder_scheme, s.pixel_layout) == expected
    assert image_settings(config, VERSIONS[llm_type], max_slice_nums=2).max_slice_nums == 2
    with pytest.raises(ValueError, match="max_slice_nums must be >= 1"):
        image_settings(config, VERSIONS[llm_type], max_slice_nums=0)


def test_slice_config_given_as_dict_without_scale_resolution():
    config = type("Config", (), {"slice_config": {"max_slice_nums": 4}, "vision_config": {"patch_size": 14},
                                 "query_num": 96})()
    s = image_settings(config, VERSIONS["llama3"])
    assert (s.max_slice_nums, s.scale_resolution, s.patch_size, s.query_num) == (4, 448, 14, 96)
