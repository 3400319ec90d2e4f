"""Known load problems of the real checkpoints, referenced by the version entries that need them."""
from __future__ import annotations

import builtins
import types
import typing

import torch
from transformers import GenerationConfig, GenerationMixin


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


class _GenerationWithoutCache(GenerationMixin):
    """generate() for an LLM whose key/value cache code no longer runs on current transformers:
    every step re-reads the whole sequence, the prompt's embeddings (images scattered in) then
    the embeddings of the tokens generated so far, with use_cache=False (as training runs it)."""

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, attention_mask=None, **kwargs):
        generated = self.get_input_embeddings()(input_ids) * getattr(self.config, "scale_emb", 1)
        if inputs_embeds is not None:
            generated = torch.cat([inputs_embeds, generated.to(inputs_embeds.dtype)], dim=1)
        return {"inputs_embeds": generated, "attention_mask": attention_mask, "use_cache": False}

    def _reorder_cache(self, past_key_values, beam_idx):
        """Beam search reorders the key/value cache after each step; here every step re-reads the
        whole sequence, so the cache generate() made stays empty and there is nothing to reorder.
        (The LLM's own _reorder_cache, which this one shadows, takes a legacy tuple cache and fails
        on the empty Cache object: AttributeError on None.index_select.)"""
        return past_key_values


def generate_without_cache(model, dtype):
    """2.0's MiniCPM LLM class inherits generate() from PreTrainedModel, which lost it in
    transformers 4.50 (GenerationMixin became a separate base), so its chat() fails with
    AttributeError. Its LLM gets GenerationMixin back, decoding without a cache (its cache code
    predates today's Cache classes). dtype: unused."""
    llm = model.llm
    if hasattr(llm, "generate"):
        return model
    llm.__class__ = type(type(llm).__name__, (_GenerationWithoutCache, type(llm)), {})
    llm.generation_config = GenerationConfig.from_model_config(llm.config)
    llm.generation_config.use_cache = False
    return model
