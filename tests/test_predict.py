"""predict.py and chat.py on samples chat() cannot be asked (issue 18.12): checked before the
weights load, each one line, the rest predicted and written as they come."""
import json

import pytest

from conftest import REGISTRY, make_image, make_video

import chat
import predict


def sample(sample_id, question, answer="x", **media):
    return {"id": sample_id, **media, "conversations": [{"role": "user", "content": question},
                                                         {"role": "assistant", "content": answer}]}


def run(tmp_path, model_dir, records, monkeypatch, capsys):
    """predict.main on `records`; (rows written, stderr, stdout). Loading the weights checks that
    every skipped sample was reported by then."""
    (tmp_path / "d.json").write_text(json.dumps(records))
    loaded = predict.load_for_inference

    def load_after_the_check(*args, **kwargs):
        reported["before_load"] = capsys.readouterr().err
        return loaded(*args, **kwargs)

    reported = {}
    monkeypatch.setattr(predict, "load_for_inference", load_after_the_check)
    predict.main(["--model", str(model_dir), "--data", str(tmp_path / "d.json"), "--out", str(tmp_path / "p.jsonl"),
                  "--max_new_tokens", "3"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    return rows, reported["before_load"] + captured.err, captured.out


def test_bad_media_are_reported_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    make_image(tmp_path / "ok.png", (64, 48))
    whole = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    make_video(tmp_path / "clip.mp4", frames=12, fps=10)
    video = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(video[: len(video) // 3])
    records = [sample("missing", "<image>\nWhat?", image="gone.png"),
               sample("cut", "<image>\nWhat?", image="cut.png"),
               sample("ok", "<image>\nWhat?", image="ok.png"),
               sample("bad-video", "<video>\nWhat?", video="cut.mp4")]
    rows, err, out = run(tmp_path, tiny_model_dir("2.6"), records, monkeypatch, capsys)
    assert [row["id"] for row in rows] == ["ok"]
    lines = [line for line in err.splitlines() if line.startswith("SKIPPED")]
    assert len(lines) == 3 and "Traceback" not in err
    assert "sample 0 (id 'missing'): image not found: " in lines[0]
    assert "sample 1 (id 'cut'): cannot read image " in lines[1]
    assert "sample 3 (id 'bad-video'): " in lines[2] and "cut.mp4" in lines[2]
    assert "1 samples predicted (3 could not be asked and were skipped, each listed above)" in out


@pytest.mark.parametrize("version,skipped,reason", [
    ("2.0", {"sys", "video"}, "this model's chat format has no system turn"),
    ("2.5", {"sys", "video"}, "MiniCPM-V 2.5's chat() takes no system turn"),
    ("2.6", set(), None), ("4.5", set(), None)])
def test_a_system_turn_goes_where_each_chat_takes_it(tiny_model_dir, tmp_path, monkeypatch, capsys, version, skipped,
                                                     reason):
    """The published chat() asserts role in user/assistant: 2.6+ take the system turn (as
    system_prompt, test below); 2.0 and 2.5 cannot be asked one, nor a video."""
    make_video(tmp_path / "clip.mp4", frames=12, fps=10)
    records = [{"id": "sys", "conversations": [{"role": "system", "content": "Answer in one word."},
                                               {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}]},
               sample("plain", "Hi"), sample("video", "<video>\nWhat?", video="clip.mp4")]
    histories = {}
    monkeypatch.setattr(predict, "ask", lambda model, tok, version, batch, prompts, *rest: (
        histories.update((s.sample_id, p[0]) for s, p in zip(batch, prompts)) or ["y"] * len(batch)))
    rows, err, _ = run(tmp_path, tiny_model_dir(version), records, monkeypatch, capsys)
    assert {line.split("(id '")[1].split("'")[0] for line in err.splitlines() if line.startswith("SKIPPED")} == skipped
    assert [row["id"] for row in rows] == [name for name in ("sys", "plain", "video") if name not in skipped]
    if reason:
        assert reason in err and "takes no video" in err
    else:
        assert histories["sys"] == [("system", "Answer in one word.")]


@pytest.mark.parametrize("version", ["2.6", "2.5"])
def test_system_prompt_reaches_chat(version):
    calls = []

    class Recorder:
        config = {"slice_config": {}}

        def chat(self, *args, **kwargs):
            calls.append(kwargs)
            return "A"

    
    history = [("system", "Be brief.")]
    if version == "2.5":
        with pytest.raises(ValueError, match="MiniCPM-V 2.5's chat\\(\\) takes no system turn"):
            chat.answer(Recorder(), "TOK", REGISTRY[version], [], "Q", history)
        return
    chat.answer(Recorder(), "TOK", REGISTRY[version], [], "Q", history)
    assert calls[-1]["system_prompt"] == "Be brief."
    chat.answer_batch(Recorder(), "TOK", REGISTRY[version], [([], "Q", history), ([], "Q2", history)])
    assert calls[-1]["system_prompt"] == "Be brief."  # one batched call
    chat.answer_batch(Recorder(), "TOK", REGISTRY[version], [([], "Q", history), ([], "Q2", [])])
    assert calls[-2]["system_prompt"] == "Be brief." and "system_prompt" not in calls[-1]  # one by one


def test_a_failure_while_predicting_keeps_the_rest(tiny_model_dir, tmp_path, monkeypatch, capsys):
    records = [sample(name, "Hi") for name in ("a", "boom", "c")]
    real_ask = predict.ask

    def ask(model, tokenizer, version, batch, *rest):
        if any(s.sample_id == "boom" for s in batch):
            raise ValueError("frame 7 cannot be decoded")
        return real_ask(model, tokenizer, version, batch, *rest)

    monkeypatch.setattr(predict, "ask", ask)
    rows, err, out = run(tmp_path, tiny_model_dir("2.6"), records, monkeypatch, capsys)
    assert [row["id"] for row in rows] == ["a", "c"]
    assert "SKIPPED " in err and "(id 'boom'): frame 7 cannot be decoded" in err
    assert "2 samples predicted (1 could not be asked" in out


def test_chat_image_that_is_missing_or_broken_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(chat, "load_for_inference", lambda *a, **k: pytest.fail("weights loaded first"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for path, reason in ((tmp_path / "none.png", "no such file"), (tmp_path / "broken.png", "cannot read it as an image")):
        with pytest.raises(SystemExit) as stopped:
            chat.main(["--model", str(tiny_model_dir("2.6")), "--image", str(path), "--question", "What?"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"chat.py: --image {path}: {reason}")


@pytest.mark.parametrize("version", ["2.6", "4.6"])
def test_chat_says_how_it_decodes_and_samples_on_request(tiny_model_dir, sample_data, monkeypatch, capsys, version):
    """Issue 29: chat.py and predict.py decoded with beam search without saying so, while the
    README's model.chat() snippet samples."""
    asked = []
    monkeypatch.setattr(chat, "converse", lambda *args, **kwargs: asked.append(kwargs["extra"]))
    base = ["--model", str(tiny_model_dir(version)), "--image", str(sample_data / "images" / "red_circle.png"),
            "--question", "What?"]
    chat.main(base)
    chat.main(base + ["--sampling"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("chat.py: decoding: ")]
    option = "sampling" if version == "2.6" else "do_sample"
    assert [extra[option] for extra in asked] == [False, True]
    assert lines == ({"2.6": ["chat.py: decoding: beam search, as chat(sampling=False) decodes (deterministic); "
                              "--sampling samples instead", "chat.py: decoding: sampling, as chat(sampling=True) samples"],
                      "4.6": ["chat.py: decoding: greedy (deterministic); --sampling samples instead",
                              "chat.py: decoding: sampling with the checkpoint's generation_config"]}[version])


def test_a_thinking_reference_is_scored_by_its_answer(monkeypatch):
    """Issue 29: predict.py kept a thinking sample's <think> block in the reference and asked with
    thinking off, so every such sample scored F1 0."""
    import io

    reference = "<think>\nIt is round and red.\n</think>\n\nA red circle."
    assert predict.answer_of(reference) == "A red circle." and predict.answer_of("A red circle.") == "A red circle."
    monkeypatch.setattr(predict, "answered_samples", lambda model, tokenizer, version, batch, *rest: [
        (sample, ([], "What?", reference), answer) for sample, answer in zip(batch, ["A red circle.",
                                                                                   "<think>\nhm\n</think>\n\nA red circle."])])
    out = io.StringIO()
    from types import SimpleNamespace

    samples = [SimpleNamespace(sample_id=k) for k in range(2)]
    predictions, references, _ = predict.predict(None, None, None, samples, out, progress=False)
    assert predictions == references == ["A red circle.", "A red circle."]
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(row["reference"], row["exact_match"], row["f1"]) for row in rows] == [(reference, True, 1.0)] * 2
