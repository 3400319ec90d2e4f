"""Shared fixtures: tiny model directories, the sample data and a trained result (each built once
per session), image and video files."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
# The processes the tests start (torchrun's log folders, killed trainings' leftovers) and the remote
# code of the tiny models (imported from a per-session cache, never a stale one) write into one
# scratch folder per test process, removed when it exits: a full suite leaves nothing in the
# system's temporary folder. This process keeps that folder (pytest's tmp_path lives there).
tempfile.gettempdir()  # fixed for this process before TMPDIR changes
SCRATCH = tempfile.mkdtemp(prefix="ft_tests_")  # short: socket paths under it have 108 bytes
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
os.environ["TMPDIR"] = SCRATCH
os.environ["HF_MODULES_CACHE"] = os.path.join(SCRATCH, "hf_modules")
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import transformers  # noqa: E402

from minicpmv_ft import versions  # noqa: E402

# Every checkpoint generation the tests run on: the registry's (minicpmv_ft/versions/), each with
# a tiny-model recipe (tools/make_tiny_model.py). The remote-code ones need transformers 4.57
# (requirements.txt), the native ones their own environment (environments.py says which);
# each environment runs the tests of its versions.
# A version with a second published checkpoint (4.7: dense and MoE) runs them as two test
# parameters ("4.7", "4.7-moe"; make_tiny_model.VARIANTS); REGISTRY maps both to its entry.
import make_tiny_model  # noqa: E402

REGISTRY = {**versions.VERSIONS, **{name: versions.VERSIONS[base] for name, (base, _) in make_tiny_model.VARIANTS.items()}}


def with_variants(names):
    return [*names, *(name for name, (base, _) in make_tiny_model.VARIANTS.items() if base in names)]


REMOTE_VERSIONS = with_variants(versions.REMOTE_CODE_VERSIONS)
NATIVE_VERSIONS = with_variants(versions.NATIVE_VERSIONS)
NATIVE_ENVIRONMENT = versions.in_native_environment()
VERSIONS = NATIVE_VERSIONS if NATIVE_ENVIRONMENT else REMOTE_VERSIONS


# The quick tier (`bash run_tests.sh -m quick`, docs/testing.md): every test but the multi-process
# ones (slow) and those marked long; of a long test marked `long(demo_version_quick=True)` it keeps
# the demo version's run (one full training run, the merge, the chat of a result).
QUICK_VERSION = "2.6"
# Fixtures that train a result several tests read (conftest's, test_tools.py's, test_own_chat.py's).
SHARED_RESULTS = ("shapes_full", "adapters", "trained")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-process runs (torchrun, DeepSpeed); deselect with -m 'not slow'")
    config.addinivalue_line("markers", "long(demo_version_quick=False): trains to a result or starts processes of "
                                       "its own (5 s or more); the quick tier leaves it out (or runs the demo "
                                       "version's only)")
    config.addinivalue_line("markers", "quick: the quick tier, set by this conftest: -m quick")
    config.addinivalue_line("markers", "native: needs a native checkpoint's environment (minicpmv_ft/versions/environments.py)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by the markers added here
def pytest_collection_modifyitems(config, items):
    """The default environment leaves out the tests marked native; a native one runs those
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
    for item in items:
        callspec = getattr(item, "callspec", None)
        long = item.get_closest_marker("long")
        demo_version = (long is not None and long.kwargs.get("demo_version_quick") and not NATIVE_ENVIRONMENT
                        and callspec is not None and callspec.params.get("version") == QUICK_VERSION
                        and callspec.params.get("mode", "full") == "full")
        if item.get_closest_marker("slow") is None and (long is None or demo_version):
            item.add_marker(pytest.mark.quick)
        # run_tests.sh runs the tests in one pytest-xdist worker per core (--dist loadgroup): the
        # readers of a result trained by a fixture go to one worker, which trains it once
        shared = next((name for name in SHARED_RESULTS if name in getattr(item, "fixturenames", ())), None)
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))


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

    loaded = {}

    def get(version):
        if version not in loaded:
            path = tiny_model_dir(version)
            auto_class = getattr(transformers, REGISTRY[version].auto_class)
            loaded[version] = (AutoTokenizer.from_pretrained(path, trust_remote_code=True),
                               auto_class.from_pretrained(path, trust_remote_code=True))
        return loaded[version]

    return get


@pytest.fixture(scope="session")
def packable(tiny, tmp_path_factory):
    """version -> (tokenizer, model): the tiny model, or where its LLM has layers packing refuses
    (4.6's linear attention), the same version built with full-attention layers only."""
    import transformers

    import make_tiny_model
    from minicpmv_ft.packing import check_packable

    made = {}

    def get(version):
        tok, model = tiny(version)
        try:
            check_packable(model.config, version)
            return tok, model
        except ValueError:
            if version not in made:
                path = make_tiny_model.build(version, tmp_path_factory.mktemp("full-attention") / version,
                                             layer_types=["full_attention", "full_attention"])
                made[version] = getattr(transformers, REGISTRY[version].auto_class).from_pretrained(path)
            return tok, made[version]

    return get


def chat_call(model, version, image, msgs, tokenizer, **kwargs):
    """model.chat() with the checkpoint's own signature (the registry says which)."""
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


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--out", str(out)], check=True)
    return out


def cpu_flags(output_dir, epochs, lr):
    return ["--output_dir", str(output_dir), "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
            "--num_train_epochs", str(epochs), "--learning_rate", str(lr), "--per_device_train_batch_size", "2",
            "--logging_steps", "7", "--max_slice_nums", "1", "--disable_tqdm", "true", "--seed", "0"]


@pytest.fixture(scope="session")
def shapes_full(tiny_model_dir, sample_data, tmp_path_factory):
    """version -> (its Trainer, output folder) of a full fine-tune on the six shape images (one
    each, 30 epochs, the vision tower at a tenth of the rate), trained once per test session for
    the tests that only read the result."""
    import finetune

    trained = {}

    def get(version):
        if version not in trained:
            records = [r for r in json.loads((sample_data / "train.json").read_text()) if r["id"].startswith("shape-")]
            folder = tmp_path_factory.mktemp(f"shapes-full-{version}")
            (folder / "shapes.json").write_text(json.dumps(records))
            out = folder / "out"
            trainer = finetune.train(["--model_name_or_path", str(tiny_model_dir(version)), "--data_path",
                                      str(folder / "shapes.json"), "--image_folder", str(sample_data)]
                                     + cpu_flags(out, 30, 1e-3) + ["--vision_lr", "1e-4",
                                                                   "--per_device_train_batch_size", "1"])
            trained[version] = trainer, out
        return trained[version]

    return get
