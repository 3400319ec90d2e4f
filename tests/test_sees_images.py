"""After training, each version's own chat() tells the training images apart: a pipeline that
drops image features, or puts them where the model does not read them, answers alike for
every image (issue 18.5: the demo's results did)."""
import json

import pytest
from PIL import Image

from conftest import VERSIONS
from test_finetune import cpu_flags, sample_data  # noqa: F401  (fixture)

import chat
import finetune
from minicpmv_ft.loading import load_for_inference


@pytest.mark.parametrize("version", VERSIONS)
def test_full_fine_tune_answers_each_training_image_right(tiny_model_dir, sample_data, tmp_path, version):  # noqa: F811
    records = [r for r in json.loads((sample_data / "train.json").read_text()) if r["id"].startswith("shape-")]
    (tmp_path / "shapes.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    finetune.train(["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(tmp_path / "shapes.json"),
                    "--image_folder", str(sample_data)] + cpu_flags(out, 30, 1e-3) + ["--vision_lr", "1e-4", "--per_device_train_batch_size", "1"])
    tokenizer, model, entry, _ = load_for_inference(str(out))
    answers = {}
    for record in records:
        image = Image.open(sample_data / record["image"]).convert("RGB")
        answers[record["conversations"][1]["content"]] = chat.answer(model, tokenizer, entry, [image],
                                                                     "What is in the picture?", max_new_tokens=16)
    assert answers == {want: want for want in answers}
