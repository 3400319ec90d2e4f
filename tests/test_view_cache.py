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


def test_an_image_replaced_with_its_modification_time_restored_is_not_served_stale(tiny, tmp_path):
    """Issue 18.16: the key was path + mtime + size, so a same-size replacement whose mtime was
    set back served the old pixels; the change time and inode cannot be set back."""
    tok, model = tiny("2.6")
    data = records(tmp_path)[:1]
    cache = tmp_path / "cache"
    ds = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=str(cache))
    ds[0]
    before = os.stat(tmp_path / "wide.jpg")
    make_image(tmp_path / "new.jpg", (1200, 500), seed=9)
    os.replace(tmp_path / "new.jpg", tmp_path / "wide.jpg")
    os.utime(tmp_path / "wide.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))
    if os.stat(tmp_path / "wide.jpg").st_size != before.st_size:  # the same size makes the old key collide
        (tmp_path / "wide.jpg").write_bytes((tmp_path / "wide.jpg").read_bytes()[:before.st_size].ljust(before.st_size, b"\0"))
        os.utime(tmp_path / "wide.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(tmp_path / "wide.jpg").st_mtime_ns == before.st_mtime_ns
    assert_same_items(ds[0], SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path))[0])


def test_an_entry_whose_data_disagrees_with_its_header_is_rebuilt(tiny, tmp_path):
    tok, model = tiny("2.6")
    data = records(tmp_path)[:1]
    cache = tmp_path / "cache"
    ds = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=str(cache))
    want = ds[0]
    (entry,) = cache.glob("*/*.views")
    whole = bytearray(entry.read_bytes())
    whole[-10] ^= 0xFF  # one damaged byte, length intact
    entry.write_bytes(bytes(whole))
    assert_same_items(ds[0], want)
    entry.write_bytes(entry.read_bytes() + b"\0" * 12)  # grown
    assert_same_items(ds[0], want)


def test_cache_folder_problems_are_one_line_before_loading(tmp_path, monkeypatch):
    import tempfile

    import finetune

    (tmp_path / "file").write_text("x")
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as the arguments look
    argv = ["--model_name_or_path", str(tmp_path), "--data_path", "x.json", "--output_dir", str(tmp_path / "o"),
            "--use_cpu", "true"]
    with pytest.raises(ValueError, match=rf"^--image_cache_dir {tmp_path / 'file'} is a file, not a folder$"):
        finetune.parse_arguments(argv + ["--image_cache_dir", str(tmp_path / "file")])

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match=r"--image_cache_dir .*ro: cannot write there \(Permission denied\)"):
        finetune.parse_arguments(argv + ["--image_cache_dir", str(tmp_path / "ro")])


def test_a_cache_entry_removed_by_another_run_while_sizing_is_not_an_error(tmp_path, monkeypatch):
    from minicpmv_ft import view_cache

    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "x.views").write_bytes(b"1234")
    (tmp_path / "ab" / "y.tmp").write_bytes(b"12")
    entries = view_cache._entries

    def vanishing(folder):
        found = entries(folder)
        if folder.endswith("ab"):
            os.remove(tmp_path / "ab" / "y.tmp")  # another run renamed its temporary file into place
        return found

    monkeypatch.setattr(view_cache, "_entries", vanishing)
    assert view_cache.held_bytes(str(tmp_path)) == 4


def test_two_runs_share_one_cache_folder(tiny, tmp_path, monkeypatch):
    """Runs with the same settings reuse each other's entries; other settings add their own."""
    tok, model = tiny("2.6")
    data = records(tmp_path)[:1]
    cache = str(tmp_path / "cache")
    first = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=cache)[0]
    other = SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=cache, max_slice_nums=2)[0]
    assert len(list((tmp_path / "cache").glob("*/*.views"))) == 2
    again = [SupervisedDataset(data, tok, model.config, base_dir=str(tmp_path), image_cache_dir=cache, **options)
             for options in ({}, {"max_slice_nums": 2})]  # the data check reads headers; items come from the cache
    decoded = []
    original = encoding.read_image
    monkeypatch.setattr(encoding, "read_image", lambda s, p, decode: decoded.append(p) or original(s, p, decode))
    assert_same_items(again[0][0], first)
    assert_same_items(again[1][0], other)
    assert decoded == []
