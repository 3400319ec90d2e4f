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

import transformers  # noqa: E402
from packaging.version import Version  # noqa: E402

# Every checkpoint generation the tests run on: each has a registry entry
# (minicpmv_ft/versions/) and a tiny-model recipe (tools/make_tiny_model.py). The remote-code
# ones need transformers 4.57 (requirements.txt), the native 4.6 its own environment with
# transformers >= 5.7 (requirements-4.6.txt); each environment runs the tests of its versions.
REMOTE_VERSIONS = ["2.0", "2.5", "2.6", "4.0", "4.5"]
NATIVE_VERSIONS = ["4.6"]
NATIVE_ENVIRONMENT = Version(transformers.__version__) >= Version("5.7")
VERSIONS = NATIVE_VERSIONS if NATIVE_ENVIRONMENT else REMOTE_VERSIONS


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-process runs (torchrun, DeepSpeed); deselect with -m 'not slow'")
    config.addinivalue_line("markers", "native: needs the 4.6 environment (transformers >= 5.7)")


def pytest_collection_modifyitems(config, items):
    """The default environment leaves out the tests marked native; the 4.6 environment runs those
    and the tests parametrised with a native version, nothing else (the rest is about the
    remote-code checkpoints, which need transformers 4.57)."""
    def native(item):
        callspec = getattr(item, "callspec", None)
        return item.get_closest_marker("native") is not None or (
            callspec is not None and callspec.params.get("version") in NATIVE_VERSIONS)

    keep = [item for item in items if native(item) == NATIVE_ENVIRONMENT]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """version -> path of a tiny model directory, built on first use."""
    import make_tiny_model

    built = {}

    def get(version):
        if version not in built:
            built[version] = make_tiny_model.build(version, tmp_path_factory.mktemp("models") / version)
        return built[version]

    return get


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """version -> (tokenizer, model) loaded with trust_remote_code (by the version's Auto class),
    as users load real ones."""
    from transformers import AutoTokenizer

    from minicpmv_ft.versions import VERSIONS as REGISTRY

    loaded = {}

    def get(version):
        if version not in loaded:
            path = tiny_model_dir(version)
            auto_class = getattr(transformers, REGISTRY[version].auto_class)
            loaded[version] = (AutoTokenizer.from_pretrained(path, trust_remote_code=True),
                               auto_class.from_pretrained(path, trust_remote_code=True))
        return loaded[version]

    return get


def chat_call(model, version, image, msgs, tokenizer, **kwargs):
    """model.chat() with the checkpoint's own signature (the registry says which)."""
    from minicpmv_ft.versions import VERSIONS as REGISTRY

    entry = REGISTRY[version]
    if entry.chat_takes_context:
        return model.chat(image, msgs, None, tokenizer, **kwargs)[0]
    if entry.chat_images_in_messages and image is not None:
        msgs = [{**msgs[0], "content": [image, msgs[0]["content"]]}] + list(msgs[1:])
        image = None
    return model.chat(image, msgs, tokenizer, **kwargs)


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


def make_video(path, frames, fps=10, size=(64, 48), faststart=False):
    """An MPEG-4 video whose frame k is a flat grey of value (10 * k) % 256, written with PyAV
    (faststart: its index before the frames, so a copy cut short keeps an intact container)."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (10 * k) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
