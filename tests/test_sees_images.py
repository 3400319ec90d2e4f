"""After training, each version's own chat() tells the training images apart: a pipeline that
drops image features, or puts them where the model does not read them, answers alike for
every image (issue 18.5: the demo's results did)."""
import json

import pytest
from PIL import Image

from conftest import VERSIONS

import chat
from minicpmv_ft.loading import load_for_inference

pytestmark = pytest.mark.long(demo_version_quick=True)  # 2.6 reads the quick tier's training run


@pytest.mark.parametrize("version", VERSIONS)
def test_full_fine_tune_answers_each_training_image_right(shapes_full, sample_data, version):  # noqa: F811
    _, out = shapes_full(version)
    records = [r for r in json.loads((sample_data / "train.json").read_text()) if r["id"].startswith("shape-")]
    tokenizer, model, entry, _ = load_for_inference(str(out))
    answers = {}
    for record in records:
        image = Image.open(sample_data / record["image"]).convert("RGB")
        answers[record["conversations"][1]["content"]] = chat.answer(model, tokenizer, entry, [image],
                                                                     "What is in the picture?", max_new_tokens=16)
    assert answers == {want: want for want in answers}
