"""Check a dataset with exactly the preprocessing training uses, before spending GPU hours.

    python check_data.py --model_name_or_path M --data_path D [any of finetune.py's model and data
        flags: --eval_data_path, --data_format, --image_folder, --max_slice_nums, --model_max_length,
        --video_*, --keep_earlier_reasoning, --verify_images, ...] [--num_workers W] [--show N] [--json FILE]

Every conversation is tokenized and every image's header read (its size gives the slices and
tokens) with a check that the file is whole, as training does; --verify_images decodes and
slices every image too. Prints each problem (file,
sample index, id, reason), the OK / truncated / dropped / failed counts, token lengths split
into text and image tokens, the model_max_length that keeps all (or 99%) of the samples
intact, slices per image, frames / placeholders / tokens per video and tokens per second of
video, and animated images (only their first frame is trained on). Only the tokenizer and
config are loaded, no weights.
Exit code 0 only when no sample failed (dropped samples are reported, not failures).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import typing
from collections import Counter
from dataclasses import dataclass, field, replace


from dataset import make_encoder
from minicpmv_ft.arguments import ArgumentParser, DataArguments, ModelArguments, TrainingArguments, video_scheme
from minicpmv_ft.chat_tokens import IGNORE_INDEX
from minicpmv_ft.encoding import SampleEncoder, check_records
from minicpmv_ft.errors import DataError
from minicpmv_ft.loading import load_tokenizer_and_version
from minicpmv_ft.quiet import quiet_third_party
from minicpmv_ft.preference_data import pair_format
from minicpmv_ft.preference_dataset import SIDES, pair_reports, side_records
from minicpmv_ft.samples import read_records, sft_records

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"


@dataclass
class CheckArguments:
    num_workers: int = field(default=os.cpu_count() or 1, metadata={"help": "processes (default: all cores)"})
    show: int = field(default=0, metadata={"help": "print N samples with trained spans marked"})
    json: typing.Optional[str] = field(default=None, metadata={"help": "also write the report as JSON to this file"})


def parse_args(argv=None):
    """finetune.py's own model and data arguments (one declaration: minicpmv_ft/arguments.py), so
    the check sees every sample as training will, and this tool's own."""
    parser = ArgumentParser((ModelArguments, DataArguments, CheckArguments), description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    *parsed, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    ignored = training_options(rest, parser)
    if ignored:  # a training command pasted whole: its training options do not change the check
        print(f"check_data: ignoring the training options {' '.join(ignored)} (they do not change how samples are "
              "checked)", file=sys.stderr)
    return parsed


def training_options(rest: list, parser) -> list:
    """The `--name [value]` options of finetune.py's training arguments in `rest`; anything else
    is a usage error (one line, from `parser`)."""
    known = {f"--{option.name}" for option in dataclasses.fields(TrainingArguments)}
    ignored = []
    for argument in rest:
        if argument.startswith("--") and argument.split("=", 1)[0] in known:
            ignored.append(argument)
        elif ignored and not argument.startswith("--"):
            ignored.append(argument)  # the value of the option before it
        else:
            parser.error(f"unrecognized arguments: {argument}")
    return ignored


def percentile(sorted_values, fraction):
    """Smallest value that at least `fraction` of the values do not exceed."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def summarise(source: str, encoder: SampleEncoder, reports) -> dict:
    measured = [r for r in reports if r.status != "failed"]
    status = Counter(r.status for r in reports)
    total = sorted(r.tokens for r in measured)
    columns = {"total": total, "text": sorted(r.tokens - r.image_tokens for r in measured),
               "image": sorted(r.image_tokens for r in measured)}
    return {
        "file": source, "version": encoder.version.name, "max_slice_nums": encoder.settings.max_slice_nums,
        "model_max_length": encoder.model_max_length,
        "unit": "samples",  # or pairs (check_file)
        "counts": {"samples": len(reports), "ok": status["ok"] + status["truncated"],
                   "truncated": status["truncated"], "dropped": status["dropped"], "failed": status["failed"]},
        "problems": [{"index": r.index, "id": r.sample_id, "status": r.status, "reason": r.reason}
                     for r in reports if r.status in ("failed", "dropped")],
        "animated_images": [{"index": r.index, "id": r.sample_id, "image": image}
                            for r in measured for image in r.animated],
        "tokens": {name: {"p50": percentile(v, 0.5), "p90": percentile(v, 0.9), "p99": percentile(v, 0.99),
                          "max": v[-1] if v else 0} for name, v in columns.items()},
        "histogram": histogram(total),
        "model_max_length_to_keep": {"all": percentile(total, 1.0), "99%": percentile(total, 0.99)},
        "views_per_image": dict(sorted(Counter(n for r in measured for n in r.views_per_image).items())),
        "videos": video_summary(measured),
    }


def video_summary(reports) -> dict | None:
    """Frames, groups (placeholders) and tokens per video, and the token cost per second."""
    videos = [video for r in reports for video in r.videos]
    if not videos:
        return None
    columns = {key: sorted(video[key] for video in videos) for key in ("seconds", "frames", "groups", "tokens")}
    seconds = sum(columns["seconds"])
    return {"count": len(videos),
            **{key: {"p50": percentile(v, 0.5), "max": v[-1]} for key, v in columns.items()},
            "tokens_per_second": round(sum(columns["tokens"]) / seconds, 1) if seconds else None}


def histogram(values, bins=10):
    """[[low, high, count], ...] over equal-width bins of the sorted values."""
    if not values:
        return []
    width = max(1, math.ceil((values[-1] + 1) / bins))
    counts = Counter(v // width for v in values)
    return [[b * width, (b + 1) * width - 1, counts[b]] for b in range(values[-1] // width + 1)]


def format_report(report: dict) -> str:
    c, unit = report["counts"], report["unit"]
    each = unit[:-1]  # "sample", "pair" (its longer side)
    lines = [f"{report['file']} (MiniCPM-V {report['version']}, max_slice_nums {report['max_slice_nums']}, "
             f"model_max_length {report['model_max_length']})",
             f"  {unit} {c['samples']}: ok {c['ok']} (of which truncated {c['truncated']}), "
             f"dropped {c['dropped']}, failed {c['failed']}",
             f"  tokens per {each:<6}    p50     p90     p99     max"]
    for name, row in report["tokens"].items():
        lines.append(f"    {name:<16}{row['p50']:>7} {row['p90']:>7} {row['p99']:>7} {row['max']:>7}")
    lines.append(f"  total tokens per {each}" + (" (prompt + its longer answer):" if unit == "pairs" else ":"))
    peak = max((count for _, _, count in report["histogram"]), default=1)
    for low, high, count in report["histogram"]:
        lines.append(f"    {low:>6}-{high:<6} {'#' * math.ceil(40 * count / peak):<40} {count}")
    keep = report["model_max_length_to_keep"]
    lines.append(f"  model_max_length that keeps every {each} intact: {keep['all']}; 99% of {unit}: {keep['99%']}")
    views = ", ".join(f"{n}: {count}" for n, count in report["views_per_image"].items())
    video = report["videos"]
    if views:
        lines.append(f"  views per image (1 + slices) -> images: {views}")
    elif not video:
        lines.append("  no images or videos")
    if video:
        lines.append(f"  videos {video['count']}: seconds p50 {video['seconds']['p50']} max {video['seconds']['max']}; "
                     f"frames p50 {video['frames']['p50']} max {video['frames']['max']}; placeholders (groups) p50 "
                     f"{video['groups']['p50']} max {video['groups']['max']}; tokens p50 {video['tokens']['p50']} max "
                     f"{video['tokens']['max']} ({video['tokens_per_second']} per second of video)")
    for p in report["problems"]:
        lines.append(f"  {p['status'].upper()} {report['file']}, {each} {p['index']} (id {p['id']!r}): {p['reason']}")
    for a in report["animated_images"]:
        lines.append(f"  ANIMATED {report['file']}, sample {a['index']} (id {a['id']!r}): {a['image']}; "
                     f"only the first frame is trained on")
    return "\n".join(lines)


def render_trained(encoder: SampleEncoder, sample, what: str | None = None) -> str:
    """A sample's text with trained tokens between [[ and ]]; query blocks and video placeholders
    shortened; `what` names it in the header (default "sample N")."""
    tok = encoder.tokenizer
    encoded = encoder.encode_from_headers(sample)
    pieces, group, trained = [], [], False

    def flush():
        if group:
            text = tok.decode(group, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = shorten_repeats(text)
            pieces.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
            group.clear()

    for token, label in zip(encoded.input_ids, encoded.labels):
        if label not in (IGNORE_INDEX, token):  # 2.0: end of an answer learnt at the next turn's token
            flush()
            pieces.append(TRAINED_OPEN + tok.decode([label], skip_special_tokens=False) + TRAINED_CLOSE)
        is_trained = label == token
        if is_trained != trained:
            flush()
            trained = is_trained
        group.append(token)
    flush()
    header = f"--- {what or f'sample {sample.index}'} (id {sample.sample_id!r}): {len(encoded.input_ids)} tokens, " \
             f"{sum(label != IGNORE_INDEX for label in encoded.labels)} trained"
    return header + "\n" + "".join(pieces)


def shorten_repeats(text: str) -> str:
    """'<unk><unk><unk>' -> '<unk>x3': a run of one special token (a query block, a video's
    placeholders) reads as one item."""
    return re.sub(r"(<[^<>\s]+>)\1{2,}", lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text)


def check_file(path, encoder: SampleEncoder, num_workers: int, image_folder=None, data_format="auto",
               verify_images=False, show=0):
    """([(what to call it, sample)] of the first `show` usable samples, the summary of every record
    of the file). A file of preference pairs is checked pair by pair: both sides as training
    encodes them, a pair's tokens its longer side's; `show` shows both sides of the first pairs."""
    raw, source, folder = read_records(path, image_folder)
    if raw and pair_format(raw[0]) is not None:
        sides, _ = side_records(raw, data_format)
        side_reports = check_records(encoder, sides, source, folder, verify_images=verify_images,
                                     num_workers=num_workers, progress=True)
        reports = pair_reports(sides, side_reports, encoder.model_max_length)
        usable = [report.index for report in reports if report.usable][:show]
        shown = [(f"pair {i}, {side}", encoder.parse(sides[2 * i + k], i, source, folder)) for i in usable
                 for k, side in enumerate(SIDES)]
        return shown, {**summarise(source, encoder, reports), "unit": "pairs"}
    records = sft_records(raw, source, data_format)
    reports = check_records(encoder, records, source, folder, verify_images=verify_images, num_workers=num_workers,
                            progress=True)
    usable = [report.index for report in reports if report.usable][:show]
    return [(None, encoder.parse(records[i], i, source, folder)) for i in usable], summarise(source, encoder, reports)


def setup(argv):
    """(data options, this tool's options, the encoder training would use) for the command line."""
    model_args, data_args, args = parse_args(argv)
    quiet_third_party()
    tokenizer, config, version = load_tokenizer_and_version(model_args.model_name_or_path, model_args.llm_type)
    scheme = video_scheme(version, data_args)
    if scheme is not None:
        version = replace(version, video=scheme)
    return data_args, args, make_encoder(tokenizer, config, version, data_args.max_slice_nums,
                                         data_args.model_max_length, data_args.keep_earlier_reasoning)


def main(argv=None) -> int:
    try:
        data_args, args, encoder = setup(argv)
    except (ValueError, OSError) as error:  # the options or the model folder: one line, as finetune.py says it
        print(f"check_data.py: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    reports, failed, unusable = [], 0, []
    for path in filter(None, (data_args.data_path, data_args.eval_data_path)):
        try:
            shown, report = check_file(path, encoder, args.num_workers, data_args.image_folder, data_args.data_format,
                                       data_args.verify_images, args.show)
        except DataError as error:  # the file itself: missing, not UTF-8, not JSON, empty
            print(f"FAILED {error}")
            unusable.append(path)
            continue
        reports.append(report)
        failed += report["counts"]["failed"]
        print(format_report(report))
        if report["counts"]["ok"] == 0:
            print(f"FAILED {path}: no sample left to train on")
            unusable.append(path)
        for what, sample in shown:
            print(render_trained(encoder, sample, what))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"files": reports, "failed": failed, "unusable_files": unusable}, handle, indent=1, default=str)
    items = "pair(s)" if reports and all(report["unit"] == "pairs" for report in reports) else "sample(s)"
    if failed:
        print(f"FAILED: {failed} {items} cannot be trained on as written")
    if unusable:
        print(f"FAILED: nothing to train on in {', '.join(unusable)}")
    dropped = Counter(p["reason"] for report in reports for p in report["problems"] if p["status"] == "dropped")
    if dropped:
        print(f"WARNING: {sum(dropped.values())} {items} dropped, training leaves them out: "
              + "; ".join(f"{n} {reason}" for reason, n in dropped.most_common()))
    if not failed and not unusable and not dropped:
        print(f"OK: every {items[:-3]} trains as written")
    return 1 if failed or unusable else 0


if __name__ == "__main__":
    sys.exit(main())
