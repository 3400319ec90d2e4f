"""The error types the package's modules share: a leaf module (it imports nothing of the
package), so that a module raising one need not import the module that defines the data it
checks."""
from __future__ import annotations


class DataError(ValueError):
    """A sample that cannot be trained on as written."""

    def __init__(self, source: str, index: int | None, sample_id, reason: str):
        self.source, self.index, self.sample_id, self.reason = source, index, sample_id, reason
        where = source if index is None else f"{source}, sample {index} (id {sample_id!r})"
        super().__init__(f"{where}: {reason}")
