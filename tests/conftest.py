"""Shared fixtures: tiny model directories (built once per session) and image files."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
# Remote code of the tiny models is imported from a per-session cache, never a stale one.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="hf_modules_")
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

LLM_TYPES = ["minicpm", "llama3", "qwen"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """llm_type -> path of a tiny model directory, built on first use."""
    import make_tiny_model

    built = {}

    def get(llm_type):
        if llm_type not in built:
            built[llm_type] = make_tiny_model.build(llm_type, tmp_path_factory.mktemp("models") / llm_type)
        return built[llm_type]

    return get


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """llm_type -> (tokenizer, model) loaded with trust_remote_code, as users load real ones."""
    from transformers import AutoModel, AutoTokenizer

    loaded = {}

    def get(llm_type):
        if llm_type not in loaded:
            path = tiny_model_dir(llm_type)
            loaded[llm_type] = (AutoTokenizer.from_pretrained(path, trust_remote_code=True),
                                AutoModel.from_pretrained(path, trust_remote_code=True))
        return loaded[llm_type]

    return get


def make_image(path, size, seed=0):
    """A deterministic RGB image of (W, H) written to path."""
    rng = np.random.RandomState(seed)
    pixels = (rng.rand(size[1], size[0], 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def image_file(tmp_path):
    def write(name="img.png", size=(640, 480), seed=0):
        return make_image(tmp_path / name, size, seed)

    return write
