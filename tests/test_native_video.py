"""Video on the native checkpoints (4.6, 4.7 dense and MoE): the ids, modality ids, pixels and
trained labels of a video sample are what its own processor makes when it samples the whole
decoded video itself; the --video_* options reach its video processor; the data check's per-video
report; chat and predict ask about a video with the prompt and pixels training uses."""
import json

import pytest
import torch
from PIL import Image

from conftest import NATIVE_VERSIONS, REGISTRY, make_image, make_video
from dataset import SupervisedDataset

pytestmark = pytest.mark.native  # runs in the transformers 5 environment (requirements-transformers5.txt)

QUESTION, ANSWER = "What changes?", "It gets brighter."


@pytest.fixture(scope="module")
def processors(tiny_model_dir):
    from transformers import AutoProcessor

    loaded = {}

    def get(version):
        if version not in loaded:
            loaded[version] = AutoProcessor.from_pretrained(tiny_model_dir(version))
        return loaded[version]

    return get


def whole_video(path):
    """Every frame of the file and its metadata, read by transformers' own PyAV reader."""
    from transformers.video_utils import read_video_pyav

    return read_video_pyav(path, sample_indices_fn=lambda metadata, **_: list(range(metadata.total_num_frames)))


def reference(processor, content, answer, images=(), videos=(), **video_options):
    """Its processor's inputs for the conversation; it samples the videos' frames itself."""
    text = processor.apply_chat_template([{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    decoded = [whole_video(path) for path in videos]
    options = {"videos": [frames for frames, _ in decoded],
               "videos_kwargs": {"video_metadata": [meta for _, meta in decoded], **video_options}} if decoded else {}
    return processor(text=[text], images=list(images) or None, return_tensors="pt", **options)


def check_item(item, expected, tok):
    assert item["input_ids"].tolist() == expected["input_ids"][0].tolist()
    if "mm_token_type_ids" in item:
        assert item["mm_token_type_ids"].tolist() == expected["mm_token_type_ids"][0].tolist()
    for pixels, sizes in (("pixel_values", "target_sizes"), ("pixel_values_videos", "target_sizes_videos")):
        if sizes in expected:
            assert torch.equal(item[pixels], expected[pixels][0])
            assert item[sizes].tolist() == expected[sizes].tolist()
        else:
            assert sizes not in item or len(item[sizes]) == 0
    trained = [t for t in item["labels"].tolist() if t != -100]
    assert trained == tok.encode(ANSWER + "<|im_end|>", add_special_tokens=False)  # an empty think block is context


@pytest.mark.parametrize("shape", ["video", "video and image", "two videos"])
@pytest.mark.parametrize("version", NATIVE_VERSIONS)
def test_video_items_are_what_its_processor_makes(tiny, processors, tmp_path, version, shape):
    tok, model = tiny(version)
    processor = processors(version)
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10, size=(640, 480))  # 2.5 s: 3 frames, 3 views each
    short = make_video(tmp_path / "short.mp4", frames=12, fps=10, size=(64, 48))  # 1.2 s: 2 frames, 1 view each
    video, text = {"type": "video"}, {"type": "text", "text": QUESTION}
    if shape == "video":
        record = {"video": clip, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"}]}
        content, videos, images = [video, text], [clip], []
    elif shape == "video and image":
        image = make_image(tmp_path / "wide.png", (1000, 460), seed=1)
        record = {"image": str(image), "video": clip,
                  "conversations": [{"role": "user", "content": f"<image>\n<video>\n{QUESTION}"}]}
        content, videos, images = [{"type": "image"}, video, text], [clip], [Image.open(image).convert("RGB")]
    else:  # 4.6 puts an id before each video, counting the sample's videos; 4.7 none
        record = {"video": {"<video_00>": clip, "<video_01>": short},
                  "conversations": [{"role": "user", "content": f"<video_00>\n<video_01>\n{QUESTION}"}]}
        content, videos, images = [video, video, text], [clip, short], []
    record["conversations"].append({"role": "assistant", "content": ANSWER})
    item = SupervisedDataset([record], tok, model.config)[0]
    check_item(item, reference(processor, content, ANSWER, images, videos), tok)
    assert len(item["target_sizes_videos"]) == 3 * 3 + 2 * (shape == "two videos")


def test_the_video_options_reach_its_video_processor(tiny, processors, tmp_path):
    """--video_max_frames is its max_num_frames (a 5 s video then samples 3 frames, spread over
    tenths of a second), --video_max_slice_nums its max_slice_nums."""
    from minicpmv_ft.arguments import DataArguments, video_scheme

    version = "4.7"
    tok, model = tiny(version)
    clip = make_video(tmp_path / "clip.mp4", frames=50, fps=10, size=(640, 480))
    scheme = video_scheme(REGISTRY[version], DataArguments(data_path="x", video_max_frames=3, video_max_slice_nums=1))
    record = {"video": clip, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"},
                                               {"role": "assistant", "content": ANSWER}]}
    dataset = SupervisedDataset([record], tok, model.config, video=scheme)
    expected = reference(processors(version), [{"type": "video"}, {"type": "text", "text": QUESTION}], ANSWER,
                         videos=[clip], max_num_frames=3, max_slice_nums=1)
    check_item(dataset[0], expected, tok)
    assert len(dataset[0]["target_sizes_videos"]) == 3  # 3 frames, unsliced
    assert dataset.reports[0].videos[0]["frames"] == 3


@pytest.mark.parametrize("version", ["4.6", "4.7"])
def test_the_check_reports_frames_and_the_placeholders_tokens_per_video(tiny, processors, tmp_path, version):
    tok, model = tiny(version)
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10, size=(640, 480))
    record = {"video": clip, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"},
                                               {"role": "assistant", "content": ANSWER}]}
    dataset = SupervisedDataset([record], tok, model.config)
    ids = dataset[0]["input_ids"].tolist()
    kinds = processors(version).create_mm_token_type_ids([ids])[0]
    # the placeholder: 4.6's video id, then per frame <image> + video tokens + </image> and its slices
    first = next(k for k, t in enumerate(ids) if t in tok.convert_tokens_to_ids(["<image_id>", "<image>"]))
    last = max(k for k, kind in enumerate(kinds) if kind == 2) + 1  # the last slice's </slice>
    assert dataset.reports[0].videos == [{"path": clip, "seconds": 2.5, "frames": 3, "groups": 3,
                                          "tokens": last - first + 1}]
    assert tok.convert_ids_to_tokens(ids[last]) == "</slice>"


def test_a_video_processor_that_stacks_frames_is_refused(tiny, tmp_path):
    from transformers import AutoProcessor

    tok, model = tiny("4.6")
    folder = tmp_path / "stacking"
    processor = AutoProcessor.from_pretrained(tok.name_or_path)
    processor.video_processor.stack_frames = 3
    processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    record = {"video": clip, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"},
                                               {"role": "assistant", "content": ANSWER}]}
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match=r"stacks 3 frames a second into composite images \(stack_frames in "
                                         r"video_preprocessor_config.json\); training on such videos is not "
                                         r"supported yet: set stack_frames to 1 there"):
        SupervisedDataset([record], AutoTokenizer.from_pretrained(folder), model.config)


@pytest.mark.parametrize("version", ["4.6", "4.7"])
def test_chat_about_a_video_sees_the_prompt_and_pixels_training_uses(tiny, processors, tmp_path, monkeypatch, version):
    import chat

    tok, model = tiny(version)
    entry = REGISTRY[version]
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10, size=(640, 480))
    captured = []
    monkeypatch.setattr(model, "generate", lambda **inputs: captured.append(inputs) or inputs["input_ids"])
    media, extra = chat.video_frames(entry, clip)
    chat.answer(model, processors(version), entry, media, QUESTION, extra=extra)
    (inputs,) = captured
    record = {"video": clip, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"},
                                               {"role": "assistant", "content": ANSWER}]}
    item = SupervisedDataset([record], tok, model.config)[0]
    prompt = inputs["input_ids"][0].tolist()
    assert item["input_ids"].tolist()[:len(prompt)] == prompt
    assert torch.equal(item["pixel_values_videos"], inputs["pixel_values_videos"][0])
    assert item["target_sizes_videos"].tolist() == inputs["target_sizes_videos"].tolist()


def test_predict_asks_about_a_video_sample(tiny_model_dir, tmp_path, capsys):
    import predict

    make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    samples = [{"id": "v", "video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                                 {"role": "assistant", "content": "x"}]},
               {"id": "t", "conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "y"}]}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    predict.main(["--model", str(tiny_model_dir("4.6")), "--data", str(tmp_path / "d.json"), "--out",
                  str(tmp_path / "p.jsonl"), "--max_new_tokens", "3"])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["v", "t"] and rows[0]["question"] == "What?"
    assert "2 samples predicted" in capsys.readouterr().out


def test_frames_of_a_video_a_batch_and_a_pack_keep_their_order(tiny, tmp_path):
    """A batch's (and a pack's) video views are its samples' in sample order, images apart."""
    from minicpmv_ft.batching import PROCESSOR_MEDIA, collate, pack

    tok, model = tiny("4.6")
    clip = make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    short = make_video(tmp_path / "short.mp4", frames=12, fps=10)
    records = [{"video": path, "conversations": [{"role": "user", "content": f"<video>\n{QUESTION}"},
                                                 {"role": "assistant", "content": ANSWER}]} for path in (clip, short)]
    records.insert(1, {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})
    dataset = SupervisedDataset(records, tok, model.config)
    items = [dataset[k] for k in range(3)]
    for joined in (collate(items, PROCESSOR_MEDIA), pack(items, PROCESSOR_MEDIA)):
        pixels = joined["pixel_values_videos"].reshape(3, 14, -1)
        assert torch.equal(pixels, torch.cat([items[0]["pixel_values_videos"], items[2]["pixel_values_videos"]], -1))
        assert joined["target_sizes_videos"].tolist() == (items[0]["target_sizes_videos"].tolist()
                                                          + items[2]["target_sizes_videos"].tolist())
        assert "pixel_values" not in joined  # no images: the model runs no image pass
