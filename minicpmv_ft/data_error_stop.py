"""A sample that fails only while training (an image or video damaged inside an intact file,
which the default check does not decode): the run stops at the step boundary with a complete
checkpoint of the steps done, on every rank at the same step, and says which sample failed.

Each update's batches are fetched before its step; a failure on any rank is agreed on by all
(one max-reduce of a flag per update, as the signal stop does per step) so that no rank enters
a step, or a ZeRO save, the others skip."""
from __future__ import annotations

import torch

from .errors import DataError

# torch re-raises an exception from a DataLoader worker that it cannot rebuild from one message
# (DataError takes four arguments) as RuntimeError("Caught DataError in DataLoader worker ...")
# holding the worker's traceback, whose last line is "<module>.DataError: <our message>"
WORKER_PREFIX = f"Caught {DataError.__name__} "


def failing_sample(error: BaseException) -> str | None:
    """Our one-line message when `error` is a sample's DataError, raised here or in a DataLoader
    worker; None for any other error."""
    if isinstance(error, DataError):
        return str(error)
    text = str(error)
    if isinstance(error, RuntimeError) and text.startswith(WORKER_PREFIX):
        return text.strip().splitlines()[-1].split(f"{DataError.__name__}: ", 1)[-1]
    return None


def first_failure(message: str | None, device) -> str | None:
    """The failure message of the lowest rank that has one (every rank gets the same), or None
    when no rank failed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return message
    flag = torch.tensor(int(message is not None), device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if not int(flag):
        return None
    messages = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(messages, message)
    return next(found for found in messages if found is not None)
