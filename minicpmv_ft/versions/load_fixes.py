"""Known load problems of the real checkpoints, referenced by the version entries that need them."""
from __future__ import annotations

import builtins
import types
import typing


def list_builtin():
    """The real 2.5/2.6 resampler.py uses `List` without importing it; torch >= 2.7 no longer
    leaks it into builtins, so importing the remote code fails with NameError."""
    builtins.List = typing.List


def cast_to_dtype(model, dtype):
    """A half-precision load of 2.0 leaves the resampler's position embedding in fp32. dtype
    None: casting is not ours to do (ZeRO-3 partitions, 4-bit weights)."""
    return model if dtype is None else model.to(dtype)


def input_embeddings_from_llm(model, dtype):
    """2.0 lacks get_input_embeddings (some revisions raise NotImplementedError, others
    AttributeError); PEFT and gradient checkpointing call it."""
    try:
        model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        model.get_input_embeddings = types.MethodType(lambda self: self.llm.get_input_embeddings(), model)
    return model
