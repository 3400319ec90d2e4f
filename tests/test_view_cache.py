"""--image_cache_dir: cached views give the same items bit for bit and skip decoding; a changed
image or a damaged entry is rebuilt; a cache that cannot fit is refused before training."""
import os
import shutil

import pytest
import torch

import dataset as dataset_module
from conftest import make_image
from dataset import SupervisedDataset
from minicpmv_ft import encoding


def records(folder):
    make_image(folder / "wide.jpg", (1200, 500), seed=4)
    make_image(folder / "small.png", (300, 200), seed=5)
    return [{"image": "wide.jpg", "conversations": [{"role": "user", "content": "<image>\nWhat?"},
                                                   {"role": "assistant", "content": "Noise."}]},
            {"image": {"<image_00>": "small.png", "<image_01>": "wide.jpg"},
             "conversations": [{"role": "user", "content": "<image_00><image_01> Same?"},
                               {"role": "assistant", "content": "No."}]}]


def assert_same_items(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "pixel_values":
            assert len(a[key]) == len(b[key]) and all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
        elif torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("version", ["2.0", "2.6"])  # [3, H, W] and patch-major pixels
def test_cached_views_give_the_same_items_without_decoding(tiny, tmp_path, monkeypatch, version):
    tok, model = tiny(version)
    data = records(tmp_path)
    plain = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path))
    expected = [plain[i] for i in range(2)]
    cache = tmp_path / "cache"
    cached = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=str(cache))
    first = [cached[i] for i in range(2)]  # fills the cache
    assert len(list(cache.glob("*/*.views"))) == 2  # one entry per image file
    decoded = []
    original = encoding.read_image
    monkeypatch.setattr(encoding, "read_image", lambda s, p, decode: decoded.append(p) or original(s, p, decode))
    for i in range(2):
        assert_same_items(cached[i], expected[i])
        assert_same_items(first[i], expected[i])
    assert decoded == []


def test_a_changed_image_or_a_damaged_entry_is_rebuilt(tiny, tmp_path):
    tok, model = tiny("2.6")
    data = records(tmp_path)[:1]
    cache = tmp_path / "cache"
    ds = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=str(cache))
    ds[0]
    (entry,) = cache.glob("*/*.views")
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    assert_same_items(ds[0], SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path))[0])
    make_image(tmp_path / "wide.jpg", (1200, 500), seed=9)  # new pixels, same size
    os.utime(tmp_path / "wide.jpg", ns=(1, 10**18))
    fresh = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path))[0]
    assert_same_items(ds[0], fresh)
    assert len(list(cache.glob("*/*.views"))) == 2  # the old version's entry stays, a new one is added


def test_a_cache_that_does_not_fit_is_refused_naming_the_sizes(tiny, tmp_path, monkeypatch):
    tok, model = tiny("2.6")
    monkeypatch.setattr(dataset_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(ValueError, match=r"--image_cache_dir .*cache: this data's views need up to 0\.0 GiB .* "
                                         r"the disk has 0\.0 GiB free"):
        SupervisedDataset(records(tmp_path), tok, model.config, base_dir=str(tmp_path),
                          image_cache_dir=str(tmp_path / "cache"))


def test_view_bytes_in_the_report_are_the_cached_views(tiny, tmp_path):
    tok, model = tiny("2.6")
    ds = SupervisedDataset(records(tmp_path), tok, model.config, base_dir=str(tmp_path),
                           image_cache_dir=str(tmp_path / "cache"))
    for i in range(2):
        ds[i]
    held = sum(entry.stat().st_size for entry in (tmp_path / "cache").glob("*/*.views"))
    wide_only, both = (report.view_bytes for report in ds.reports)
    assert both > wide_only > 0
    assert 0 < held - both < 1000  # each image's views once, plus small headers


def test_a_videos_frames_are_cached_and_read_back_the_same(tiny, tmp_path, monkeypatch):
    from conftest import make_video

    tok, model = tiny("4.5")
    make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    data = [{"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                    {"role": "assistant", "content": "Grey."}]}]
    expected = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path))[0]
    cached = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=str(tmp_path / "c"))
    first = cached[0]
    assert len(list((tmp_path / "c").glob("*/*.views"))) == 1
    monkeypatch.setattr(encoding, "decode_frames", lambda *a: pytest.fail("frames decoded again"))
    for item in (first, cached[0]):
        assert_same_items(item, expected)
    held = sum(entry.stat().st_size for entry in (tmp_path / "c").glob("*/*.views"))
    assert 0 < held - cached.reports[0].view_bytes < 1000  # 8 frames' views, plus a header
