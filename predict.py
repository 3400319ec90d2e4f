"""Run a fine-tuned checkpoint (full, LoRA adapter or merged) over a data file and score it.

    python predict.py --model output/minicpmv_lora [--base BASE] --data eval.json --out preds.jsonl

Each sample's last assistant turn is the reference; everything before it is the prompt, asked
through the checkpoint's own chat() as chat.py does (images with the first question), in
batches of --batch_size where that chat() takes batches (2.6+). Writes
one JSON line per sample (id, question, reference, prediction, exact_match, f1) and prints
exact match and token F1 (SQuAD-style: lower case, no punctuation or articles) over all of
them, plus BLEU when sacrebleu is installed. The model is loaded once. Samples that fail the
data check are listed and counted, not predicted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
from collections import Counter

import torch

from chat import answer, answer_batch, split_system, video_frames
from minicpmv_ft.chat_formats import Qwen3ThinkingChat
from minicpmv_ft.data_formats import FORMATS
from minicpmv_ft.encoding import read_image
from minicpmv_ft.errors import DataError
from minicpmv_ft.images import open_rgb
from minicpmv_ft.loading import (AdapterBaseError, adapter_max_slice_nums, default_dtype, load_for_inference,
                                 version_for_inference)
from minicpmv_ft.output_paths import OutputPathError, check_output_file
from minicpmv_ft.quiet import quiet_third_party
from minicpmv_ft.samples import MARKERS, load_records, parse_sample
from minicpmv_ft.versions import names_where
from minicpmv_ft.video import VideoError, read_video_info

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


def answer_of(text: str) -> str:
    """The answer of a text, after any thinking block: a thinking sample's reference keeps its
    reasoning, a prediction has one with --thinking, and the scores compare answers with answers."""
    return Qwen3ThinkingChat.split_reasoning(text)[1]


def exact_match(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def token_f1(prediction: str, reference: str) -> float:
    predicted, wanted = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def bleu(predictions: list[str], references: list[str]) -> float | None:
    try:
        import sacrebleu
    except ImportError:
        return None
    return sacrebleu.corpus_bleu(predictions, [references]).score


def without_markers(text: str) -> str:
    """The text as a chat() question: image markers (and the newline after one) removed."""
    return MARKERS.sub("", re.sub(f"({MARKERS.pattern})\n", r"\1", text)).strip()


def prompt_of(sample):
    """(history as (role, text), last question, reference answer)."""
    turns = [(turn.role, without_markers(turn.parts[0])) for turn in sample.turns]
    return turns[:-2], turns[-2][1], sample.turns[-1].parts[0]


def read_samples(path, version, image_folder, data_format):
    """(samples to ask, DataErrors of those that cannot be asked): checked before the model loads,
    media included, so a bad sample costs a line rather than the run."""
    records, source, folder = load_records(path, image_folder, data_format)
    samples, failed = [], []
    for index, record in enumerate(records):
        try:
            sample = parse_sample(record, index, source, folder, version.chat.system_allowed)
            check_askable(sample, version)
            samples.append(sample)
        except DataError as error:
            failed.append(error)
    return samples, failed


def check_askable(sample, version):
    """DataError when chat() cannot be asked this sample: its media unreadable (images checked as
    the data check does; videos' containers read), a video where the version takes
    none or beside other media, a system turn its chat() does not take."""
    try:
        split_system(version, [(turn.role, "") for turn in sample.turns])
    except ValueError as error:
        raise sample.error(str(error)) from None
    if sample.video_paths:
        if version.video is None:
            raise sample.error(f"{version.checkpoints} takes no video")
        if len(sample.video_paths) > 1 or sample.image_paths:
            raise sample.error("predict.py asks about one video, without images, per sample")
        try:
            read_video_info(sample.video_paths[0])
        except VideoError as error:
            raise sample.error(f"{sample.video_paths[0]}: {error}") from None
    for path in sample.image_paths:
        read_image(sample, path, decode=False)


def predict(model, tokenizer, version, samples, out, max_new_tokens=256, thinking=False, max_slice_nums=None,
            batch_size=8, progress=True):
    """Writes one JSON line per sample to `out`, `batch_size` samples per chat() call where the
    checkpoint's chat() takes batches (2.6+); returns (predictions, references, DataErrors of the
    samples that failed while asked)."""
    from tqdm import tqdm

    predictions, references, failed = [], [], []
    with tqdm(total=len(samples), desc="predicting", unit="sample", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            answered = answered_samples(model, tokenizer, version, batch, max_new_tokens, thinking, max_slice_nums,
                                        failed)
            for sample, (_, question, reference), prediction in answered:
                predictions.append(answer_of(prediction))
                references.append(answer_of(reference))
                out.write(json.dumps({"id": sample.sample_id, "question": question, "reference": reference,
                                      "prediction": prediction,
                                      "exact_match": exact_match(predictions[-1], references[-1]),
                                      "f1": round(token_f1(predictions[-1], references[-1]), 4)},
                                     ensure_ascii=False) + "\n")
            out.flush()  # what was predicted stays written, whatever happens later
            bar.update(len(batch))
    return predictions, references, failed


def answered_samples(model, tokenizer, version, batch, max_new_tokens, thinking, max_slice_nums, failed):
    """(sample, prompt, answer) for the batch; a sample whose media fail while being read now (a
    video that stops decoding) is asked alone, and if it fails again goes to `failed` as a DataError."""
    prompts = [prompt_of(sample) for sample in batch]
    try:
        return list(zip(batch, prompts, ask(model, tokenizer, version, batch, prompts, max_new_tokens, thinking,
                                            max_slice_nums)))
    except (ValueError, OSError) as error:
        if len(batch) == 1:
            failed.append(batch[0].error(getattr(error, "reason", str(error))))
            print(f"SKIPPED {failed[-1]}", file=sys.stderr)
            return []
    return [result for sample in batch
            for result in answered_samples(model, tokenizer, version, [sample], max_new_tokens, thinking,
                                           max_slice_nums, failed)]


def ask(model, tokenizer, version, batch, prompts, max_new_tokens, thinking, max_slice_nums) -> list[str]:
    """Answers to a batch: image and text samples in one batched chat() call, a video sample on its
    own with its frames and chat() options (as chat.py --video asks)."""
    plain = [k for k, sample in enumerate(batch) if not sample.video_paths]
    answers = {}
    if plain:
        requests = [([open_rgb(path) for path in batch[k].image_paths], prompts[k][1], prompts[k][0]) for k in plain]
        answers.update(zip(plain, answer_batch(model, tokenizer, version, requests, max_new_tokens, thinking,
                                               max_slice_nums)))
    for k, sample in enumerate(batch):
        if sample.video_paths:
            frames, extra = video_frames(version, sample.video_paths[0])
            answers[k] = answer(model, tokenizer, version, frames, prompts[k][1], prompts[k][0], max_new_tokens,
                                thinking, max_slice_nums, extra)
    return [answers[k] for k in range(len(batch))]


def scores(predictions, references) -> dict:
    n = max(len(references), 1)
    result = {"samples": len(references),
              "exact_match": 100 * sum(map(exact_match, predictions, references)) / n,
              "token_f1": 100 * sum(map(token_f1, predictions, references)) / n}
    result["bleu"] = bleu(predictions, references)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned checkpoint, merged model or LoRA adapter folder")
    parser.add_argument("--base", default=None, help="base model of a LoRA adapter (default: the one it records)")
    parser.add_argument("--data", required=True, help="data file: the last assistant turn of each sample is the reference")
    parser.add_argument("--out", required=True, help="predictions, JSON Lines")
    parser.add_argument("--data_format", default="auto", choices=FORMATS, help="as in training")
    parser.add_argument("--image_folder", default=None, help="as in training: where relative image paths start")
    parser.add_argument("--max_samples", type=int, default=None, help="predict only the first N samples")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="samples per chat() call for checkpoints whose chat() takes batches (2.6, 4.0, 4.5)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--max_slice_nums", type=int, default=None,
                        help="most slices per image; default: what the model was trained (or saved) with")
    parser.add_argument("--thinking", action="store_true",
                        help=f"thinking models ({names_where(lambda v: v.chat.thinking)}): reason before answering")
    args = parser.parse_args(argv)
    quiet_third_party()
    try:  # the samples are checked before the weights load
        check_output_file("--out", args.out, {"the --data file": args.data})
        samples, failed = read_samples(args.data, version_for_inference(args.model, args.base), args.image_folder,
                                       args.data_format)
        for error in failed[:20]:
            print(f"SKIPPED {error}", file=sys.stderr)
        if len(failed) > 20:
            print(f"SKIPPED {len(failed) - 20} more samples", file=sys.stderr)
        if not samples:
            raise DataError(args.data, None, None, f"none of its {len(failed)} samples can be asked (each listed above)")
        tokenizer, model, version, _ = load_for_inference(args.model, args.base, default_dtype())
    except (AdapterBaseError, DataError, OutputPathError) as error:
        parser.exit(2, f"predict.py: {error}\n")
    samples = samples[: args.max_samples]
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    print(f"predict.py: decoding: {version.family.decoding(False)[1]}, so the scores repeat; thinking "
          f"{'on' if args.thinking else 'off'}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as out:
        predictions, references, failed_now = predict(
            model, tokenizer, version, samples, out, args.max_new_tokens, args.thinking,
            args.max_slice_nums or adapter_max_slice_nums(args.model), args.batch_size, sys.stderr.isatty())
    failed += failed_now
    result = scores(predictions, references)
    bleu_text = f", BLEU {result['bleu']:.1f}" if result["bleu"] is not None else " (BLEU: pip install sacrebleu)"
    print(f"{args.data}: {result['samples']} samples predicted ({len(failed)} could not be asked and were "
          f"skipped{', each listed above' if failed else ''}): exact match {result['exact_match']:.1f}%, token F1 {result['token_f1']:.1f}%{bleu_text}; "
          f"predictions in {args.out}; the scores compare the answers, after any thinking block")
    return 0 if result["samples"] else 1  # nothing predicted is no score


if __name__ == "__main__":
    sys.exit(main())
