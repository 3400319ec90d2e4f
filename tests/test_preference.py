"""Preference pairs (--method dpo): one pair in every format becomes
the same two training samples; bad pairs are errors naming the reason; the DPO loss is ln 2
with the reference equal to the policy and has the closed-form gradient."""
import json
import math
import os

import pytest
import torch

from minicpmv_ft.data_formats import Unconvertible, to_native
from minicpmv_ft.preference_data import pair_format, to_pair
from minicpmv_ft.preference_loss import dpo_losses, sequence_logps

QUESTION, CHOSEN, REJECTED = "What is it?", "A cat.", "A dog."
SAME_PAIR = {
    "native": {"id": 7, "image": "a.png", "conversations": [{"role": "user", "content": QUESTION}],
               "chosen": CHOSEN, "rejected": {"content": REJECTED}},
    "rlaif-v": {"id": 7, "question": QUESTION, "chosen": CHOSEN, "rejected": REJECTED,
                "image": {"path": "a.png", "bytes": None}, "ds_name": "RLAIF-V", "origin_split": "train"},
    "sharegpt": {"id": 7, "conversations": [{"from": "human", "value": QUESTION}], "chosen": {"from": "gpt", "value": CHOSEN},
                 "rejected": {"from": "gpt", "value": REJECTED}, "images": ["a.png"]},
    "messages": {"id": 7, "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": CHOSEN}],
                 "rejected_response": REJECTED, "images": ["a.png"]},
}


def rlaif_logps(chosen: float, rejected: float, tokens: int = 4) -> str:
    """An RLAIF-V logps value as its reference pass writes it: a JSON string of {"logps": [chosen
    sum, mean, per-token list, rejected sum, mean, per-token list]} (a per-token list covers the
    whole row, prompt positions included)."""
    row = [-0.5] * 3 + [chosen / tokens] * tokens, [-0.5] * 3 + [rejected / tokens] * tokens
    return json.dumps({"logps": [chosen, chosen / tokens, row[0], rejected, rejected / tokens, row[1]]})


@pytest.mark.parametrize("data_format", list(SAME_PAIR))
def test_one_pair_in_every_format_is_the_same_two_samples(data_format):
    record = SAME_PAIR[data_format]
    assert pair_format(record) == data_format
    pair = to_pair(record)
    expected = [{"id": 7, "image": "a.png", "conversations": [{"role": "user", "content": QUESTION},
                                                               {"role": "assistant", "content": answer}]}
                for answer in (CHOSEN, REJECTED)]
    assert [to_native(pair.chosen), to_native(pair.rejected)] == expected
    assert pair.reference is None


def test_a_thinking_answer_keeps_its_reasoning_and_rlaif_v_its_reference_log_probs():
    pair = to_pair({"conversations": [{"role": "user", "content": "2+2?"}], "rejected": "5",
                    "chosen": {"role": "assistant", "content": "4", "reasoning_content": "two and two"}})
    assert pair.chosen["conversations"][-1] == {"role": "assistant", "content": "4", "reasoning_content": "two and two"}
    rlaif = to_pair({**SAME_PAIR["rlaif-v"], "logps": rlaif_logps(-12.5, -20.0)})
    assert rlaif.reference == (-12.5, -20.0)  # the sums, not the per-token means


def test_rlaif_v_log_probs_are_read_as_rlaif_v_writes_and_reads_them():
    """Its reference pass writes json.dumps({"logps": six values}); its dataset also takes the
    bare list; a JSON reader may hand either already parsed (issue 28.3: we asked for 4 numbers
    in another order and refused its files)."""
    written = rlaif_logps(-12.5, -20.0)
    six = json.loads(written)["logps"]
    for value in (written, json.dumps(six), six, {"logps": six}):
        assert to_pair({**SAME_PAIR["rlaif-v"], "logps": value}).reference == (-12.5, -20.0), value


def test_ms_swift_rejected_messages_make_the_same_pair_as_its_rejected_response():
    """ms-swift >= 3.8 also writes the rejected side whole: "rejected_messages" (the prompt again,
    then the rejected answer) with "rejected_images"."""
    record = SAME_PAIR["messages"]
    whole = {key: value for key, value in record.items() if key != "rejected_response"}
    whole["rejected_messages"] = record["messages"][:-1] + [{"role": "assistant", "content": REJECTED}]
    whole["rejected_images"] = list(record["images"])
    expected, pair = to_pair(record), to_pair(whole)
    assert pair_format(whole) == "messages"
    assert [to_native(pair.chosen), to_native(pair.rejected)] == [to_native(expected.chosen),
                                                                  to_native(expected.rejected)]
    for changed, reason in (({"rejected_images": ["b.png"]}, '"rejected_images" differs from "images"'),
                            ({"rejected_messages": [{"role": "user", "content": "Other?"}, whole["rejected_messages"][-1]]},
                             '"rejected_messages" asks another prompt than "messages"'),
                            ({"rejected_response": REJECTED}, 'both "rejected_response" and "rejected_messages"')):
        bad = to_pair({**whole, **changed})
        assert isinstance(bad, Unconvertible) and reason in bad.reason, bad


@pytest.mark.parametrize("record,reason", [
    ({**SAME_PAIR["native"], "rejected": CHOSEN}, "the chosen and the rejected answer are the same"),
    ({**SAME_PAIR["native"], "conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
     "native pair: the prompt must end with a user turn"),
    ({**SAME_PAIR["native"], "chosen": "  "}, 'native pair: "chosen" is empty'),
    ({**SAME_PAIR["native"], "chosen": {"role": "user", "content": "x"}}, '"chosen" is from \'user\''),
    ({k: v for k, v in SAME_PAIR["native"].items() if k != "rejected"}, "not a preference pair"),
    ({**SAME_PAIR["rlaif-v"], "image": {"path": None, "bytes": b"\x89PNG"}}, "image bytes are read from Parquet files"),
    ({**SAME_PAIR["rlaif-v"], "score": 3}, "rlaif-v pair: unknown key 'score'"),
    ({**SAME_PAIR["rlaif-v"], "logps": [-1.0, -2.0, -0.5, -1.0]},
     '"logps" must be RLAIF-V\'s 6 values (chosen sum, chosen mean, chosen per-token list, rejected sum, rejected '
     'mean, rejected per-token list), as a list or a JSON string of the list or of {"logps": list}; found 4 values'),
    ({**SAME_PAIR["rlaif-v"], "logps": '{"logps": [-1.0, -0.5, [], -2.0'}, '"logps" is not JSON (Expecting'),
    ({**SAME_PAIR["rlaif-v"], "logps": [-1.0, -0.5, -0.5, -2.0, -1.0, []]},
     '"logps" chosen per-token list is float, not a list'),
    ({**SAME_PAIR["rlaif-v"], "logps": [float("nan"), -0.5, [], -2.0, -1.0, []]},
     '"logps" chosen sum is nan: a log-probability is a finite number at most 0'),
    ({**SAME_PAIR["rlaif-v"], "logps": [-1.0, -0.5, [], 50, -1.0, []]}, '"logps" rejected sum is 50'),
    ({**SAME_PAIR["native"], "reference_logps": [True, -1.0]}, '"reference_logps" chosen is True'),
    ({**SAME_PAIR["native"], "reference_logps": [-1.0, float("inf")]}, '"reference_logps" rejected is inf'),
    ({**SAME_PAIR["messages"], "messages": SAME_PAIR["messages"]["messages"][:1]},
     '"messages" must end with the chosen answer'),
    ({**SAME_PAIR["sharegpt"], "rejected": {"from": "human", "value": "x"}}, '"rejected" is from \'human\''),
])
def test_a_bad_pair_says_why(record, reason):
    pair = to_pair(record)
    assert isinstance(pair, Unconvertible) and reason in pair.reason, pair
    assert pair.id == record.get("id")


def test_a_pair_in_another_format_than_named_is_refused():
    pair = to_pair(SAME_PAIR["sharegpt"], "messages")
    assert isinstance(pair, Unconvertible) and "looks like sharegpt pair data, but --data_format is messages" in pair.reason


def test_the_loss_is_ln_2_where_the_reference_is_the_policy_and_has_the_closed_form_gradient():
    policy_chosen = torch.tensor([-10.0, -3.0], requires_grad=True)
    policy_rejected = torch.tensor([-12.0, -2.0], requires_grad=True)
    same = dpo_losses(policy_chosen, policy_rejected, policy_chosen, policy_rejected)
    torch.testing.assert_close(same.losses, torch.full((2,), math.log(2)))
    reference_chosen, reference_rejected = torch.tensor([-11.0, -3.0]), torch.tensor([-11.0, -3.0])
    beta = 0.5
    result = dpo_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta)
    margin = torch.tensor([(-10 + 12) - 0.0, (-3 + 2) - 0.0])
    torch.testing.assert_close(result.losses, -torch.nn.functional.logsigmoid(beta * margin))
    result.losses.sum().backward()
    # d/d policy_chosen of -log sigmoid(beta m) = -beta sigmoid(-beta m); the rejected side the opposite
    torch.testing.assert_close(policy_chosen.grad, -beta * torch.sigmoid(-beta * margin))
    torch.testing.assert_close(policy_rejected.grad, beta * torch.sigmoid(-beta * margin))
    torch.testing.assert_close(result.chosen_rewards, beta * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(result.rejected_rewards, beta * torch.tensor([-1.0, 1.0]))
    assert result.accuracies.tolist() == [1.0, 0.0]


def test_label_smoothing_and_the_settings_it_refuses():
    margin = torch.tensor([2.0])
    smoothed = dpo_losses(margin, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0, label_smoothing=0.2)
    expected = -0.8 * torch.nn.functional.logsigmoid(margin) - 0.2 * torch.nn.functional.logsigmoid(-margin)
    torch.testing.assert_close(smoothed.losses, expected)
    with pytest.raises(ValueError, match="--dpo_beta must be positive"):
        dpo_losses(margin, margin, margin, margin, beta=0)
    with pytest.raises(ValueError, match=r"--dpo_label_smoothing must be in \[0, 0.5\)"):
        dpo_losses(margin, margin, margin, margin, label_smoothing=0.5)


def test_sequence_log_probs_sum_each_sequences_tokens():
    token_logps = torch.tensor([-1.0, -2.0, -0.5, -4.0, -0.25])
    rows = torch.tensor([0, 0, 2, 2, 2])
    assert sequence_logps(token_logps, rows, 3).tolist() == [-3.0, 0.0, -4.75]


@pytest.mark.parametrize("version", ["2.6", "4.7"])
def test_each_side_of_a_pair_is_what_sft_makes_of_that_answer(tiny, image_file, version):
    """Ids, trained labels and pixels of each side equal the SFT item of the same conversation
    with that answer; the collator puts the chosen rows first, with the data's reference sums."""
    from dataset import SupervisedDataset
    from minicpmv_ft.preference_dataset import PreferenceDataset

    tok, model = tiny(version)
    image = image_file("p.png", (700, 500))
    pairs = [{"id": "a", "image": image, "conversations": [{"role": "user", "content": "<image>\nWhat is it?"}],
              "chosen": "Grey noise.", "rejected": "A cat on a mat, sleeping."},
             {"id": "b", "question": "Colour?", "chosen": "Grey.", "rejected": "Red.", "image": {"path": image},
              "logps": rlaif_logps(-3.0, -4.0)}]
    dataset = PreferenceDataset(pairs, tok, model.config)
    for index, pair in enumerate(pairs):
        for side in ("chosen", "rejected"):
            sft = to_native(getattr(to_pair(pair), side))
            expected = SupervisedDataset([sft], tok, model.config)[0]
            got = dataset[index][side]
            assert got["input_ids"].tolist() == expected["input_ids"].tolist()
            assert got["labels"].tolist() == expected["labels"].tolist()
            assert all(torch.equal(a, b) for a, b in zip(got["pixel_values"], expected["pixel_values"]))
    assert dataset[0]["reference"] is None and dataset[1]["reference"].tolist() == [-3.0, -4.0]
    batch = dataset.collator([dataset[0], dataset[1]])
    assert batch["pairs"] == 2 and batch["input_ids"].shape[0] == 4 and "reference" not in batch
    first = dataset[0]["rejected"]["input_ids"]
    assert batch["input_ids"][2, :len(first)].tolist() == first.tolist()  # rejected rows after the chosen ones
    assert dataset.collator([dataset[1]])["reference"].tolist() == [[-3.0, -4.0]]


def test_a_bad_pair_stops_the_build_naming_it_and_a_cut_answer_drops_its_pair(tiny, image_file, caplog):
    from minicpmv_ft.preference_dataset import PreferenceDataset
    from minicpmv_ft.errors import DataError

    tok, model = tiny("2.6")
    good = {"id": "ok", "conversations": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": "Go."}
    same = {**good, "id": "same", "rejected": "Hello."}
    with pytest.raises(DataError, match=r"sample 1 \(id 'same'\): the chosen and the rejected answer are the same"):
        PreferenceDataset([good, same], tok, model.config)
    missing = {**good, "id": "img", "image": "nowhere.png", "conversations": [{"role": "user", "content": "<image>Hi"}]}
    with pytest.raises(DataError, match=r"sample 1 \(id 'img'\): its chosen side: image not found"):
        PreferenceDataset([good, missing], tok, model.config)
    long = {**good, "id": "long", "rejected": "no " * 80}
    caplog.set_level("INFO")
    dataset = PreferenceDataset([good, long], tok, model.config, model_max_length=60)
    assert dataset.kept == [0] and dataset.dropped == [(1, "long", "its rejected side: model_max_length 60 cuts it")]
    assert "2 pairs, 1 kept, 1 dropped; 1 its rejected side: model_max_length 60 cuts it" in caplog.text


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_the_same_pair_in_every_format_and_file_kind_makes_the_same_batch(tiny, image_file, tmp_path, caplog):
    """JSON (ours, LLaMA-Factory's, ms-swift's), JSON Lines, and Parquet as Hugging Face ships
    RLAIF-V: the image's bytes inside the row, written out once beside the file."""
    from minicpmv_ft.parquet_data import images_folder
    from minicpmv_ft.preference_dataset import PreferenceDataset

    tok, model = tiny("2.6")
    image = image_file("cat.png", (500, 400))
    formats = {name: {**record, "id": 7} for name, record in SAME_PAIR.items() if name != "rlaif-v"}
    for record in formats.values():
        record["image" if "image" in record else "images"] = image if "image" in record else [image]
    formats["native"]["conversations"] = [{"role": "user", "content": "<image>\n" + QUESTION}]
    files = {name: tmp_path / f"{name}.json" for name in formats}
    for name, record in formats.items():
        files[name].write_text(json.dumps([record]))
    files["jsonl"] = tmp_path / "native.jsonl"
    files["jsonl"].write_text(json.dumps(formats["native"]) + "\n")
    row = {**SAME_PAIR["rlaif-v"], "image": {"bytes": open(image, "rb").read(), "path": "cat.png"},
           "logps": rlaif_logps(-3.0, -4.0)}
    files["parquet"] = write_parquet(tmp_path / "rlaif.parquet", [row])
    caplog.set_level("INFO")
    batches = {name: PreferenceDataset(str(path), tok, model.config) for name, path in files.items()}
    written = os.path.join(images_folder(str(files["parquet"])), os.listdir(images_folder(str(files["parquet"])))[0])
    assert open(written, "rb").read() == open(image, "rb").read() and written.endswith(".png")
    assert "1 images inside the rows written to" in caplog.text and "(0 were there already)" in caplog.text
    native = batches.pop("native")
    expected = native.collator([native[0]])
    for name, dataset in batches.items():
        got = dataset.collator([dataset[0]])
        assert got["input_ids"].tolist() == expected["input_ids"].tolist(), name
        assert got["labels"].tolist() == expected["labels"].tolist(), name
        assert all(torch.equal(a, b) for a, b in zip(got["pixel_values"][0], expected["pixel_values"][0])), name
    assert batches["parquet"][0]["reference"].tolist() == [-3.0, -4.0]
    caplog.clear()
    PreferenceDataset(str(files["parquet"]), tok, model.config)  # read again: the file is there
    assert "0 images inside the rows written to" in caplog.text and "(1 were there already)" in caplog.text


def test_ours_carries_reference_log_probs_and_a_parquet_that_is_not_says_so(tmp_path):
    from minicpmv_ft.errors import DataError
    from minicpmv_ft.samples import read_records

    pair = to_pair({**SAME_PAIR["native"], "reference_logps": [-1.5, -2.5]})
    assert pair.reference == (-1.5, -2.5) and "reference_logps" not in pair.chosen
    bad = to_pair({**SAME_PAIR["native"], "reference_logps": [-1.5]})
    assert isinstance(bad, Unconvertible) and '"reference_logps" must be 2 numbers' in bad.reason
    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + b"\0" * 20)
    with pytest.raises(DataError, match="cannot read it as Parquet"):
        read_records(str(tmp_path / "cut.parquet"), None)


def test_convert_data_writes_pairs_of_any_format_as_ours(tiny, image_file, tmp_path):
    """RLAIF-V as Parquet (image bytes, reference log-probs) -> our JSON pairs, which make the same batch."""
    import subprocess
    import sys

    from conftest import ROOT
    from minicpmv_ft.preference_dataset import PreferenceDataset

    image = image_file("cat.png", (500, 400))
    row = {**SAME_PAIR["rlaif-v"], "image": {"bytes": open(image, "rb").read(), "path": "cat.png"},
           "logps": rlaif_logps(-3.0, -4.0)}
    rows = [row, {**row, "id": 8, "rejected": row["chosen"]}]
    write_parquet(tmp_path / "rlaif.parquet", rows)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_data.py"), "--from", "pairs",
                           str(tmp_path / "rlaif.parquet"), "--out", str(tmp_path / "out" / "pairs.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "record 1: the chosen and the rejected answer are the same" in done.stderr
    assert "wrote 1 pairs to" in done.stdout
    (written,) = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert written["chosen"] == CHOSEN and written["rejected"] == REJECTED and written["reference_logps"] == [-3.0, -4.0]
    assert written["image"].startswith("../rlaif.images/")
    tok, model = tiny("2.6")
    ours = PreferenceDataset(str(tmp_path / "out" / "pairs.json"), tok, model.config)
    theirs = PreferenceDataset(str(tmp_path / "rlaif.parquet"), tok, model.config, skip_bad_samples=True)
    assert theirs.failed == [(1, 8, "the chosen and the rejected answer are the same: the pair teaches nothing")]
    assert ours[0]["chosen"]["input_ids"].tolist() == theirs[0]["chosen"]["input_ids"].tolist()
    assert ours[0]["rejected"]["labels"].tolist() == theirs[0]["rejected"]["labels"].tolist()
    assert ours[0]["reference"].tolist() == [-3.0, -4.0]
