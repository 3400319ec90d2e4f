"""The router's load-balancing loss of a mixture-of-experts LLM (MiniCPM-V 4.7-35B-A3B's
Qwen3.5-MoE), as that LLM's own causal-LM class defines it: `router_aux_loss_coef` x the
`load_balancing_loss_func` of the LLM's modeling module over every layer's router logits
(`output_router_logits`), masked by the batch's padding. MiniCPM-V's own forward returns only the
LM head's output, so the router logits are taken from the LLM's output on their way through.

The Trainer adds the term to each micro-batch's loss divided by the gradient accumulation steps
(the step's term is the mean of its micro-batches', as in a model trained without accumulation)
and logs it apart from the LM loss as `router_aux_loss` (unweighted).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable


@dataclass
class RouterLoss:
    coefficient: float
    experts: int
    top_k: int
    balance: Callable  # load_balancing_loss_func(gate_logits, num_experts, top_k, attention_mask)

    @contextmanager
    def captured(self, llm):
        """Yields a list that holds the LLM's router logits (one tensor per MoE layer) once the
        forward inside the block has run."""
        logits = []

        def keep(module, args, output):
            logits.extend(output.router_logits or ())

        handle = llm.register_forward_hook(keep)
        try:
            yield logits
        finally:
            handle.remove()

    def unweighted(self, logits, attention_mask):
        return self.balance(tuple(logits), self.experts, self.top_k, attention_mask)


def router_loss_of(llm) -> RouterLoss | None:
    """The LLM's router loss, or None for a dense LLM (or one whose modeling defines none)."""
    config = llm.config
    coefficient, experts = getattr(config, "router_aux_loss_coef", None), getattr(config, "num_experts", None)
    balance = getattr(sys.modules.get(type(llm).__module__), "load_balancing_loss_func", None)
    if not coefficient or not experts or balance is None:
        return None
    return RouterLoss(float(coefficient), int(experts), int(config.num_experts_per_tok), balance)
