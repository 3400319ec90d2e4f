"""Preference pairs -> items (the data side of `--method dpo`).

    pairs = PreferenceDataset("pairs.json", tokenizer, config)
    pairs[i]    # {"chosen": item, "rejected": item, "reference": tensor [2] or None}
    pairs.collator([pairs[0], pairs[1]])   # the chosen rows, then the rejected rows, padded as SFT

Each pair becomes two SFT records (minicpmv_ft/preference_data.py) that go through the SFT
check and encoding unchanged, so an answer's ids and trained labels are exactly what SFT
makes of it. A pair is usable when both sides are whole: a side that fails names the pair
(index and id) and the side; a side that `model_max_length` would cut drops the pair, counted
and logged (a truncated answer's log-probability would not be the answer's).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace

import torch
from torch.utils.data import Dataset

from .batching import collate
from .data_formats import Unconvertible, to_native
from .encoding import DEFAULT_MODEL_MAX_LENGTH, SampleReport, check_records
from .errors import DataError
from .node_check import checked_once_per_node, shared_on_node
from .preference_data import to_pair
from .samples import read_records
from .skipped_items import SkipsFailingItems
from .versions import detect_version

logger = logging.getLogger(__name__)
SIDES = ("chosen", "rejected")


def side_records(records: list, data_format: str = "auto") -> tuple[list, list]:
    """(the SFT records of every pair's chosen and rejected side, in that order, pair by pair;
    each pair's reference log-probs from the data or None). A side keeps its pair's id (its
    index when the pair has none), so messages name the pair."""
    sides, references = [], []
    for index, record in enumerate(records):
        pair = to_pair(record, data_format)
        if isinstance(pair, Unconvertible):
            sides += [pair, pair]
            references.append(None)
            continue
        sample_id = record.get("id", index)
        sides += [to_native({**side, "id": sample_id}) for side in (pair.chosen, pair.rejected)]
        references.append(pair.reference)
    return sides, references


def pair_reports(sides: list, reports: list, model_max_length: int) -> list[SampleReport]:
    """One report per pair from its sides' (`sides` and `reports` as side_records and
    check_records give them): failed when it cannot be converted or a side fails, dropped when
    `model_max_length` would cut a side (a cut answer is not the answer), else ok; its tokens
    the longer side's, its images and videos the chosen side's (both sides share them)."""
    combined = []
    for index in range(len(sides) // 2):
        chosen, rejected = reports[2 * index:2 * index + 2]
        pair = replace(chosen, index=index, tokens=max(chosen.tokens, rejected.tokens), status="ok", reason=None)
        unconvertible = sides[2 * index]
        if isinstance(unconvertible, Unconvertible):
            pair = replace(pair, sample_id=index if unconvertible.id is None else unconvertible.id, status="failed",
                           reason=unconvertible.reason)
        elif any(report.status == "failed" for report in (chosen, rejected)):
            side, report = next((s, r) for s, r in zip(SIDES, (chosen, rejected)) if r.status == "failed")
            pair = replace(pair, status="failed", reason=f"its {side} side: {report.reason}")
        elif any(report.status != "ok" for report in (chosen, rejected)):
            side, report = next((s, r) for s, r in zip(SIDES, (chosen, rejected)) if r.status != "ok")
            reason = report.reason if report.status == "dropped" else f"model_max_length {model_max_length} cuts it"
            pair = replace(pair, status="dropped", reason=f"its {side} side: {reason}")
        combined.append(pair)
    return combined


class PreferenceDataset(SkipsFailingItems, Dataset):
    """Takes SupervisedDataset's options; `reports` are the sides' (chosen, rejected, pair by
    pair), `dropped` and `failed` name pairs."""

    unit = "pairs"  # what the logs count

    def __init__(self, data, tokenizer, config, version=None, max_slice_nums=None,
                 model_max_length=DEFAULT_MODEL_MAX_LENGTH, base_dir=None, data_format="auto", num_workers=1,
                 video=None, skip_bad_samples=False, verify_images=False, keep_earlier_reasoning=False,
                 image_cache_dir=None):
        self.version = version or detect_version(config, tokenizer, None)
        if video is not None:  # a VideoScheme in place of the version's (--video_* options)
            self.version = replace(self.version, video=video)
        self.encoder = self.version.family.make_encoder(tokenizer, config, self.version, max_slice_nums,
                                                        model_max_length, keep_earlier_reasoning, image_cache_dir)
        self.settings = self.encoder.settings
        records, self.source, self.folder = read_records(data, base_dir)
        self.sides, self.references = side_records(records, data_format)

        def check(workers):
            return check_records(self.encoder, self.sides, self.source, self.folder, verify_images, workers)

        self.reports = checked_once_per_node(check, self.source) if shared_on_node() else check(num_workers)
        self.pair_reports = pair_reports(self.sides, self.reports, model_max_length)
        self.kept = [report.index for report in self.pair_reports if report.usable]  # pair indices, in order
        self.dropped = [(r.index, r.sample_id, r.reason) for r in self.pair_reports if r.status == "dropped"]
        self.failed = [(r.index, r.sample_id, r.reason) for r in self.pair_reports if r.status == "failed"]
        self.skip_bad_samples = skip_bad_samples
        self.failed_in_training = {}  # served index -> why a side's media failed while training (this process)
        if self.failed and not skip_bad_samples:
            raise DataError(self.source, *self.failed[0])
        self.lengths = [report.tokens for report in self.pair_reports if report.usable]
        reasons = Counter(reason for _, _, reason in self.dropped)
        logger.info("%s: %d pairs, %d kept, %d dropped%s, %d failed and skipped (MiniCPM-V %s)", self.source,
                    len(self.pair_reports), len(self.kept), len(self.dropped),
                    "".join(f"; {n} {reason}" for reason, n in reasons.items()), len(self.failed), self.version.name)
        for kind, entries in (("dropped", self.dropped), ("skipped failing", self.failed)):
            for index, sample_id, reason in entries[:20]:
                logger.warning("%s: %s pair %d (id %r): %s", self.source, kind, index, sample_id, reason)
        if not self.kept:
            raise DataError(self.source, None, None, "no pair left to train on")

    def pair_id(self, index: int):
        """The id of the pair at `index` of the data file (its index when it has none)."""
        return self.sides[2 * index].get("id", index)

    def leave_out(self, indices: list, reasons: dict, found_by: str):
        """Stops serving the pairs at `indices` (data file indices; `reasons`: index -> why),
        counted and logged as skipped failing pairs."""
        if not indices:
            return
        gone = set(indices)
        self.lengths = [length for index, length in zip(self.kept, self.lengths) if index not in gone]
        self.kept = [index for index in self.kept if index not in gone]
        self.failed += [(index, self.pair_id(index), reasons[index]) for index in indices]
        logger.warning("%s: %d pairs %s, skipped (--skip_bad_samples), e.g. pair %d (id %r): %s", self.source,
                       len(indices), found_by, indices[0], self.pair_id(indices[0]), reasons[indices[0]])
        if not self.kept:
            raise DataError(self.source, None, None, "no pair left to train on")

    def media_paths(self) -> list[str]:
        """The image and video files of the pairs kept, in order, each once."""
        paths = {}
        for index in self.kept:
            for side in self.sides[2 * index:2 * index + 2]:
                sample = self.encoder.parse(side, index, self.source, self.folder)
                paths.update(dict.fromkeys(sample.image_paths + sample.video_paths))
        return list(paths)

    def __len__(self):
        return len(self.kept)

    def build_item(self, i) -> dict:
        index = self.kept[i]
        items = {side: self.encoder.item(self.encoder.parse(self.sides[2 * index + k], index, self.source,
                                                             self.folder)) for k, side in enumerate(SIDES)}
        reference = self.references[index]
        return {**items, "reference": None if reference is None else torch.tensor(reference, dtype=torch.float32)}

    def collator(self, pairs: list[dict]) -> dict:
        """The pairs' chosen rows, then their rejected rows, as one padded SFT batch ([2P, L]), with
        `pairs` = P and the data's reference log-probs [P, 2] where every pair has them."""
        batch = collate([pair["chosen"] for pair in pairs] + [pair["rejected"] for pair in pairs],
                        self.version.family.media)
        batch["pairs"] = len(pairs)
        if all(pair["reference"] is not None for pair in pairs):
            batch["reference"] = torch.stack([pair["reference"] for pair in pairs])
        return batch
