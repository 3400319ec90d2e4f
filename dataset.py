"""JSON conversations + images -> the tensors MiniCPM-V's forward(data=...) takes.

    dataset = SupervisedDataset("train.json", tokenizer, model.config)
    batch = data_collator([dataset[0], dataset[1]])
    labels = batch.pop("labels")
    output = model(data=batch)

Every sample is checked when the dataset is built (structure, roles, image markers, image
files, token counts), with the same code check_data.py runs (minicpmv_ft/encoding.py). A
sample that fails stops the build with its file, index, id and reason (or, with
skip_bad_samples, is left out and counted); samples that `model_max_length` would cut inside
an image or leave with no trained token are dropped, logged and counted, never replaced by
another sample.
"""
from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import replace
from functools import partial

from torch.utils.data import Dataset

from minicpmv_ft.batching import REMOTE_MEDIA, collate, pack, packed_collate
from minicpmv_ft.encoding import DEFAULT_MODEL_MAX_LENGTH, SampleEncoder, check_records
from minicpmv_ft.errors import DataError
from minicpmv_ft.node_check import checked_once_per_node, shared_on_node
from minicpmv_ft.samples import Sample, load_records
from minicpmv_ft.skipped_items import SkipsFailingItems
from minicpmv_ft.versions import detect_version
from minicpmv_ft.view_cache import held_bytes

logger = logging.getLogger(__name__)


class SupervisedDataset(SkipsFailingItems, Dataset):
    """Items as SampleEncoder.item() makes them, for the samples that passed the check.

    `version` is the detected checkpoint version (finetune.py detects it once per run); when
    None it is detected here from `config` and `tokenizer`, checked against `llm_type`."""

    unit = "samples"  # what the logs count

    def __init__(self, data, tokenizer, config, llm_type=None, max_slice_nums=None, model_max_length=DEFAULT_MODEL_MAX_LENGTH,
                 base_dir=None, skip_bad_samples=False, verify_images=False, num_workers=1, progress=False,
                 version=None, keep_earlier_reasoning=False, data_format="auto", image_cache_dir=None,
                 video=None):
        self.version = version or detect_version(config, tokenizer, llm_type)
        if video is not None:  # a VideoScheme in place of the version's (--video_* options)
            self.version = replace(self.version, video=video)
        self.encoder = make_encoder(tokenizer, config, self.version, max_slice_nums, model_max_length,
                                    keep_earlier_reasoning, image_cache_dir)
        self.settings = self.encoder.settings
        # how items become batches: right-padded, or laid end to end in one row (--packing)
        media = self.version.family.media
        self.collator, self.packed_collator, self.pack_items = (
            partial(collate, layout=media), partial(packed_collate, layout=media), partial(pack, layout=media))
        self.records, self.source, self.folder = load_records(data, base_dir, data_format)
        def check(workers):
            return check_records(self.encoder, self.records, self.source, self.folder, verify_images, workers,
                                 progress)

        # several training processes on a node: its first one checks, with all the node's cores
        self.reports = checked_once_per_node(check, self.source) if shared_on_node() else check(num_workers)
        self.kept = [report.index for report in self.reports if report.usable]  # indices in the data file, in order
        # Tokens of each served sample, from the check (--group_by_length and --packing use these
        # without building the items, which would decode every image).
        self.lengths = [min(report.tokens, self.encoder.model_max_length) for report in self.reports if report.usable]
        self.dropped = [(r.index, r.sample_id, r.reason) for r in self.reports if r.status == "dropped"]
        self.failed = [(r.index, r.sample_id, r.reason) for r in self.reports if r.status == "failed"]
        self.skip_bad_samples = skip_bad_samples
        self.failed_in_training = {}  # served index -> why its media failed while training (this process)
        if self.failed and not skip_bad_samples:
            index, sample_id, reason = self.failed[0]
            more = f" (and {len(self.failed) - 1} more failing samples: run check_data.py for all of them)" \
                if len(self.failed) > 1 else ""
            raise DataError(self.source, index, sample_id, reason + more)
        if not self.kept:
            reasons = Counter(reason for _, _, reason in self.dropped + self.failed)
            raise DataError(self.source, None, None, "no sample left to train on: " + "; ".join(
                f"{n} {reason}" for reason, n in reasons.most_common(3)))
        self._log_summary()
        if image_cache_dir:
            check_cache_room(image_cache_dir, sum(report.view_bytes for report in self.reports if report.usable))

    def _log_summary(self):
        reasons = Counter(reason for _, _, reason in self.dropped)
        logger.info(
            "%s: %d samples, %d kept, %d dropped%s, %d failed and skipped (MiniCPM-V %s, max_slice_nums=%d, "
            "model_max_length=%d)", self.source, len(self.reports), len(self.kept), len(self.dropped),
            "".join(f"; {n} {r}" for r, n in reasons.items()), len(self.failed), self.version.name,
            self.settings.max_slice_nums, self.encoder.model_max_length,
        )
        for kind, entries in (("dropped", self.dropped), ("skipped failing", self.failed)):
            for index, sample_id, reason in entries[:20]:
                logger.warning("%s: %s sample %d (id %r): %s", self.source, kind, index, sample_id, reason)
        animated = [r for r in self.reports if r.animated]
        if animated:
            logger.warning("%s: %d samples have animated images; only their first frame is trained on "
                           "(e.g. sample %d: %s; check_data.py lists all)", self.source, len(animated),
                           animated[0].index, animated[0].animated[0])

    def __len__(self):
        return len(self.kept)

    def sample(self, i) -> Sample:
        """The i-th served sample, parsed from its record (as the check parsed it)."""
        return self.encoder.parse(self.records[self.kept[i]], self.kept[i], self.source, self.folder)

    def build_item(self, i):
        return self.encoder.item(self.sample(i))


def make_encoder(tokenizer, config, version, max_slice_nums=None, model_max_length=DEFAULT_MODEL_MAX_LENGTH, keep_earlier_reasoning=False,
                 image_cache_dir=None) -> SampleEncoder:
    """The sample encoder of a version: ours for the remote-code checkpoints, the checkpoint's own
    processor for a native one (read from the tokenizer's folder or hub id)."""
    return version.family.make_encoder(tokenizer, config, version, max_slice_nums, model_max_length,
                                       keep_earlier_reasoning, image_cache_dir)


def check_cache_room(folder: str, needed: int):
    """ValueError when the image cache would not fit on its disk (at most `needed` bytes: images
    that several samples share count once per sample)."""
    held = held_bytes(folder)
    free = shutil.disk_usage(folder).free
    gib = 2 ** 30
    logger.info("image cache %s: views of this data take at most %.1f GiB (%.1f GiB cached already, %.1f GiB free)",
                folder, needed / gib, held / gib, free / gib)
    if needed - held > free:
        raise ValueError(f"--image_cache_dir {folder}: this data's views need up to {needed / gib:.1f} GiB and "
                         f"{(needed - held) / gib:.1f} GiB more than is cached, but the disk has "
                         f"{free / gib:.1f} GiB free; choose a folder on a larger disk, or train without the cache")


def data_collator(examples):
    """Right-pads a list of items of a remote-code checkpoint into a batch for model(data=batch).

    input_ids pad with PAD_TOKEN_ID, labels with -100, attention_mask with 0, position_ids
    with 0; pixel_values, tgt_sizes, image_bound (and temporal_ids) stay per-sample lists (the
    remote code iterates over them). Text-only samples have empty [0, 2] tgt_sizes and image_bound.
    """
    return collate(examples, REMOTE_MEDIA)
