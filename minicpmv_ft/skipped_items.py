"""--skip_bad_samples while training: an item whose media fail only when it is built (a video
cut short inside an intact container, an image damaged inside an intact file: the default check
reads their ends) is logged with the count so far and the next readable one is served in its
place; without the option the DataError goes up (the run then stops with a checkpoint:
minicpmv_ft/data_error_stop.py)."""
from __future__ import annotations

import logging

from .errors import DataError

logger = logging.getLogger(__name__)


class SkipsFailingItems:
    """For a dataset with `build_item(i)`, `skip_bad_samples`, `source` and `unit` ("samples",
    "pairs"); `failed_in_training`: served index -> the reason it failed (this process)."""

    def __getitem__(self, i):
        if not self.skip_bad_samples:
            return self.build_item(i)
        for j in ((i + k) % len(self) for k in range(len(self))):
            item = self.usable_item(j)
            if item is not None:
                return item
        raise DataError(self.source, None, None, f"none of the {self.unit} could be read while training")

    def usable_item(self, j):
        """The j-th item, or None after it failed (logged once per process with the count so far)."""
        if j in self.failed_in_training:
            return None
        try:
            return self.build_item(j)
        except DataError as error:
            self.failed_in_training[j] = error.reason
            logger.warning("%s; failed while training, skipped (--skip_bad_samples): %d such %s so far in this "
                           "process", error, len(self.failed_in_training), self.unit)
            return None
