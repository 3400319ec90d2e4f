"""Write data in our format (docs/data.md) from the formats people have.

    python tools/convert_data.py --from sharegpt llava.json --out train.json [--image_folder DIR]
    python tools/convert_data.py --from messages swift.jsonl --out train.json
    python tools/convert_data.py --from csv table.csv --out train.json        # columns image,question,answer[,id]
    python tools/convert_data.py --from tsv table.tsv --out train.json
    python tools/convert_data.py --from folder photos/ --out train.json [--question "Describe the image."]
    python tools/convert_data.py --from pairs rlaif-v.parquet --out pairs.json   # preference pairs, any format

Every input file may be JSON, JSON Lines or Parquet (Hugging Face datasets, images inside the rows:
they are written out beside the input, DATA.images/). --from pairs reads each record's pair format
(RLAIF-V, LLaMA-Factory, ms-swift or ours) and writes ours: the prompt conversation, "chosen",
"rejected" and the reference log-probs where the input has them ("reference_logps").

ShareGPT/LLaVA and "messages" files also train directly (finetune.py reads them); converting
them is for a file in one format. A folder holds images, each with its caption in a .txt file
of the same name. Image and video paths in the output are relative to the output file's folder
(relative input paths start from the input's folder, or --image_folder), which is made if missing. Every record that could not be
converted is reported with its index and reason; the exit code is 1 when none could be.
Check the result with check_data.py.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicpmv_ft.data_formats import Unconvertible, to_native  # noqa: E402
from minicpmv_ft.errors import DataError  # noqa: E402
from minicpmv_ft.preference_data import to_pair  # noqa: E402
from minicpmv_ft.samples import load_records, read_records  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DEFAULT_QUESTION = "Describe the image."


def from_conversations(path: str, data_format: str, image_folder: str | None):
    """(native records with absolute image and video paths, [(index, reason)])."""
    records, _, folder = load_records(path, image_folder, data_format)
    converted, problems = [], []
    for index, record in enumerate(records):
        if isinstance(record, Unconvertible):
            problems.append((index, record.reason))
        elif not isinstance(record, dict):
            problems.append((index, f"a record must be a JSON object, got {type(record).__name__}"))
        elif not isinstance(record.get("conversations"), list):  # no format recognised it
            problems.append((index, f"not a {data_format} record (its keys: {', '.join(map(str, record)) or 'none'})"))
        else:
            converted.append(with_paths(record, lambda media: absolute(media, folder)))
    return converted, problems


def from_pairs(path: str, image_folder: str | None):
    """(our pair records with absolute image and video paths, [(index, reason)])."""
    records, _, folder = read_records(path, image_folder)
    converted, problems = [], []
    for index, record in enumerate(records):
        pair = to_pair(record)
        if isinstance(pair, Unconvertible):
            problems.append((index, pair.reason))
            continue
        chosen, rejected = to_native(pair.chosen), to_native(pair.rejected)
        ours = {key: value for key, value in chosen.items() if key != "conversations"}
        ours["conversations"] = chosen["conversations"][:-1]
        ours["chosen"], ours["rejected"] = answer(chosen), answer(rejected)
        if pair.reference is not None:
            ours["reference_logps"] = list(pair.reference)
        converted.append(with_paths(ours, lambda media: absolute(media, folder)))
    return converted, problems


def answer(record: dict):
    """A side's answer in our pair format: its text, or the turn with its reasoning."""
    turn = {key: value for key, value in record["conversations"][-1].items() if key != "role"}
    return turn["content"] if list(turn) == ["content"] else turn


def from_table(path: str, delimiter: str, image_folder: str | None):
    folder = image_folder or os.path.dirname(os.path.abspath(path))
    try:
        return read_table(path, delimiter, folder)
    except UnicodeDecodeError as error:
        raise SystemExit(f"convert_data: {path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                         f"{error.start}); save it as UTF-8") from None


def read_table(path: str, delimiter: str, folder: str):
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        missing = {"question", "answer"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"convert_data: {path}: the header needs the columns question and answer (and image "
                             f"for image rows; id optional); missing: {', '.join(sorted(missing))}")
        converted, problems = [], []
        for index, row in enumerate(reader):
            question, answer = (row.get("question") or "").strip(), (row.get("answer") or "").strip()
            if not question or not answer:
                problems.append((index, f"row {index + 2}: empty {'question' if not question else 'answer'}"))
                continue
            image = (row.get("image") or "").strip()
            converted.append(qa_record(row.get("id") or index, absolute(image, folder) if image else None,
                                       question, answer))
    return converted, problems


def from_folder(path: str, question: str):
    converted, problems = [], []
    images = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = Counter(image.with_suffix("") for image in images)
    for index, image in enumerate(images):
        caption_file = image.with_suffix(".txt")
        if stems[image.with_suffix("")] > 1:  # b.png and b.jpg: b.txt describes one of them, and the id is one
            others = sorted(other.name for other in images if other.with_suffix("") == image.with_suffix(""))
            problems.append((index, f"{image}: {' and '.join(others)} share the caption file {caption_file.name} and "
                                    "one id; rename all but one"))
            continue
        try:
            caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        except UnicodeDecodeError as error:
            problems.append((index, f"{caption_file}: not UTF-8 text (byte offset {error.start}); save it as UTF-8"))
            continue
        if not caption:
            problems.append((index, f"{image}: no caption ({caption_file.name} is missing or empty)"))
            continue
        converted.append(qa_record(str(image.relative_to(path).with_suffix("")), str(image.resolve()), question,
                                   caption))
    return converted, problems


def qa_record(sample_id, image: str | None, question: str, answer: str) -> dict:
    record = {"id": sample_id}
    if image:
        record["image"] = image
        question = "<image>\n" + question
    record["conversations"] = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return record


def absolute(media: str, folder: str) -> str:
    return media if os.path.isabs(media) else os.path.abspath(os.path.join(folder, media))


def with_paths(record: dict, change) -> dict:
    """The record with `change` applied to each image and video path (a path, or marker -> path)."""
    for key in ("image", "video"):
        value = record.get(key)
        if isinstance(value, str):
            record[key] = change(value)
        elif isinstance(value, dict):
            record[key] = {marker: change(path) for marker, path in value.items()}
    return record


def relative_to(records: list, out_folder: str) -> list:
    """Image and video paths relative to the output file's folder, so data and media move together."""
    return [with_paths(record, lambda media: os.path.relpath(media, out_folder)) for record in records]


def write(records: list, out: str):
    with open(out, "w", encoding="utf-8") as handle:
        if out.endswith(".jsonl"):
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            json.dump(records, handle, ensure_ascii=False, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_format", required=True,
                        choices=["sharegpt", "messages", "csv", "tsv", "folder", "pairs"])
    parser.add_argument("input", help="the data file (or, with --from folder, the folder of images)")
    parser.add_argument("--out", required=True, help="output .json (a list) or .jsonl")
    parser.add_argument("--image_folder", default=None, help="where relative image paths of the input start")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="--from folder: the question for every image")
    args = parser.parse_args(argv)
    wanted = os.path.isdir if args.source_format == "folder" else os.path.isfile
    if not wanted(args.input):
        print(f"convert_data: {args.input}: no such {'folder' if args.source_format == 'folder' else 'file'}",
              file=sys.stderr)
        return 1
    try:
        if args.source_format in ("sharegpt", "messages"):
            records, problems = from_conversations(args.input, args.source_format, args.image_folder)
        elif args.source_format == "pairs":
            records, problems = from_pairs(args.input, args.image_folder)
        elif args.source_format in ("csv", "tsv"):
            records, problems = from_table(args.input, "," if args.source_format == "csv" else "\t", args.image_folder)
        else:
            records, problems = from_folder(args.input, args.question)
    except DataError as error:
        print(f"convert_data: {error}", file=sys.stderr)
        return 1
    for index, reason in problems[:50]:
        print(f"NOT CONVERTED {args.input}, record {index}: {reason}", file=sys.stderr)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more", file=sys.stderr)
    if not records:
        print(f"convert_data: nothing converted from {args.input}", file=sys.stderr)
        return 1
    out_folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_folder, exist_ok=True)
    write(relative_to(records, out_folder), args.out)
    print(f"wrote {len(records)} {'pairs' if args.source_format == 'pairs' else 'samples'} to {args.out}; "
          f"{len(problems)} not converted. "
          f"Check it with: python check_data.py --model_name_or_path MODEL --data_path {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
