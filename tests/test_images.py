"""Images in any PIL mode reach the model as the RGB picture a person sees (issue 8.4)."""
import json
import logging

import numpy as np
import torch
from PIL import Image

import check_data
from dataset import SupervisedDataset
from minicpmv_ft.images import BACKGROUND, open_rgb


def gradient16(path):
    """A 16-bit grayscale PNG (opens as I;16), left to right from 0 to 65535."""
    values = np.tile(np.linspace(0, 65535, 200), (150, 1)).astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    values = gradient16(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).mean() > 250  # what PIL alone gives
    rgb = np.asarray(open_rgb(str(tmp_path / "g16.png")))
    assert rgb.shape == (150, 200, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257).astype(np.uint8))


def test_transparent_pixels_are_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, but only the left half is opaque
    rgba[:, :5, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(open_rgb(str(tmp_path / "a.png")))
    assert (rgb[:, :5] == (200, 0, 0)).all() and (rgb[:, 5:] == BACKGROUND).all()
    indexed = np.zeros((10, 10), dtype=np.uint8)
    indexed[:, 5:] = 1  # palette entry 1 (black) is the transparent one
    palette = Image.fromarray(indexed, "P")
    palette.putpalette([200, 0, 0, 0, 0, 0])
    palette.save(tmp_path / "p.png", transparency=1)
    rgb = np.asarray(open_rgb(str(tmp_path / "p.png")))
    assert (rgb[:, :5] == (200, 0, 0)).all() and (rgb[:, 5:] == BACKGROUND).all()


def test_training_pixels_of_a_16_bit_image_equal_its_8_bit_copy(tiny, tmp_path):
    values = gradient16(tmp_path / "g16.png")
    Image.fromarray(np.rint(values / 257).astype(np.uint8), "L").save(tmp_path / "g8.png")
    tok, model = tiny("2.6")
    conv = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A gradient."}]
    ds = SupervisedDataset([{"image": str(tmp_path / name), "conversations": conv} for name in ("g16.png", "g8.png")],
                           tok, model.config)
    sixteen, eight = ds[0]["pixel_values"], ds[1]["pixel_values"]
    assert len(sixteen) == len(eight) and all(torch.equal(a, b) for a, b in zip(sixteen, eight))
    assert float(sixteen[0].mean()) < 0.5  # not a white image (white is 1.0 after normalisation)


def test_animated_images_are_reported_and_train_on_their_first_frame(tiny, tiny_model_dir, tmp_path, capsys, caplog):
    frames = [Image.new("RGB", (64, 48), color) for color in ((200, 0, 0), (0, 0, 200), (0, 200, 0))]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.png")
    conv = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "Red."}]
    records = [{"id": "anim", "image": "moving.gif", "conversations": conv},
               {"id": "still", "image": "still.png", "conversations": conv}]
    (tmp_path / "data.json").write_text(json.dumps(records))
    tok, model = tiny("2.6")
    with caplog.at_level(logging.WARNING):
        ds = SupervisedDataset(str(tmp_path / "data.json"), tok, model.config)
    assert f"1 samples have animated images; only their first frame is trained on (e.g. sample 0: " \
           f"{tmp_path / 'moving.gif'} (3 frames)" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(ds[0]["pixel_values"], ds[1]["pixel_values"]))
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path",
                            str(tmp_path / "data.json"), "--num_workers", "1", "--json", str(tmp_path / "r.json")])
    assert code == 0  # a note, not a failure
    assert f"ANIMATED {tmp_path / 'data.json'}, sample 0 (id 'anim'): {tmp_path / 'moving.gif'} (3 frames); " \
           f"only the first frame is trained on" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())["files"][0]
    assert report["animated_images"] == [{"index": 0, "id": "anim", "image": f"{tmp_path / 'moving.gif'} (3 frames)"}]
