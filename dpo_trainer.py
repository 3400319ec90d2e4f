"""The Trainer of `--method dpo`: direct preference optimisation on pair batches
(minicpmv_ft/preference_dataset.py: the chosen rows, then the same pairs' rejected rows).

One forward scores both sides of every pair of the micro-batch, each pair's images through the
vision tower once; each answer's log-probability is the sum over exactly the tokens SFT trains
on for it, taken from the chunked LM head (trainer.py: never the full logits). The loss is
minicpmv_ft/preference_loss.py's, averaged over the optimizer step's pairs on all processes
(independent of micro-batching, accumulation and process count, as the SFT loss is over
tokens), plus with --dpo_sft_weight that weight times the chosen answer's mean token
cross-entropy per pair. The reference log-probs come from the batch (the data, or the reference
pass written next to it) or are computed here without gradient: the same model with its LoRA
adapters switched off, or a frozen copy of the starting model.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from minicpmv_ft.preference_loss import DEFAULT_BETA, dpo_losses, sequence_logps
from minicpmv_ft.preference_reference import ADAPTER_OFF, COPY, IN_BATCH
from trainer import MiniCPMVTrainer, shifted_targets

# What the logs report per pair (means over the pairs since the last log), by TRL's names:
# the implicit rewards beta (policy - reference) of each answer, their difference, the share of
# pairs whose chosen reward is the higher, and the policy's log-probabilities of each answer.
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float = DEFAULT_BETA
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    reference: str = IN_BATCH  # minicpmv_ft/preference_reference.py


class PreferenceTrainer(MiniCPMVTrainer):
    def __init__(self, *args, preference: PreferenceSettings, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.preference = preference
        self.reference_model = reference_model  # COPY: the starting model, frozen
        if reference_model is not None:
            reference_model.to(self.args.device).eval().requires_grad_(False)
        self.metric_sums = {True: torch.zeros(len(METRICS) + 1), False: torch.zeros(len(METRICS) + 1)}  # + pairs

    def _get_num_items_in_batch(self, batch_samples, device):
        """The optimizer step's pairs (on all processes when the loss is averaged across them):
        what per_step divides by."""
        pairs = torch.tensor(sum(batch["pairs"] for batch in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            pairs = self.accelerator.gather(pairs).sum()
        return pairs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs, given, positions, targets, rows = self._take_pair_batch(inputs)
        if self.preference.reference == IN_BATCH:
            if given is None:
                raise ValueError("a preference batch without reference log-probs, but the run takes them from the "
                                 "data")
            reference = given.to(device=targets.device, dtype=torch.float32).T.reshape(-1)  # chosen..., rejected...
        else:
            reference = self._reference_logps(model, inputs, positions, targets, rows, pairs)
        logps, balance = self._answer_logps(model, inputs, positions, targets, rows, pairs)
        result = dpo_losses(logps[:pairs], logps[pairs:], reference[:pairs], reference[pairs:],
                            self.preference.beta, self.preference.label_smoothing)
        losses = result.losses
        if self.preference.sft_weight:
            chosen_tokens = torch.bincount(rows, minlength=2 * pairs)[:pairs].clamp(min=1)
            losses = losses - self.preference.sft_weight * logps[:pairs] / chosen_tokens
        loss = self.per_step(losses.sum(), pairs, num_items_in_batch)
        loss = self.with_router_term(loss, balance, model.training)
        self._add_metrics(model.training, result, logps.detach(), pairs)
        return (loss, {"loss": loss}) if return_outputs else loss

    def answer_logps(self, model, inputs) -> torch.Tensor:
        """[2 x pairs] log-probs of a pair batch's answers (chosen ones, then rejected ones) under
        `model`, without gradient: the reference pass (reference_logps.py)."""
        pairs, _, positions, targets, rows = self._take_pair_batch(inputs)
        with torch.no_grad():
            return self._answer_logps(model, inputs, positions, targets, rows, pairs, router=False)[0]

    @staticmethod
    def _take_pair_batch(inputs):
        """(pairs, the batch's reference log-probs [pairs, 2] or None, the trained positions and
        their targets, the row of each target), taking those entries out of `inputs`."""
        pairs = inputs.pop("pairs")
        given = inputs.pop("reference", None)
        positions, targets = shifted_targets(inputs.pop("labels"))
        return pairs, given, positions, targets, positions.nonzero(as_tuple=True)[0]

    def _answer_logps(self, model, inputs, positions, targets, rows, pairs, router=True):
        """([2 x pairs] summed log-probs of each row's trained tokens, the router's balance loss)."""
        token_losses, balance = self.head_loss(model, inputs, positions, targets, "none", pairs, router)
        return sequence_logps(-token_losses.float(), rows, 2 * pairs), balance

    def _reference_logps(self, model, inputs, positions, targets, rows, pairs) -> torch.Tensor:
        """[2 x pairs] answer log-probs under the starting model, without gradient."""
        reference = self.reference_model if self.preference.reference == COPY else model
        adapters_off = self.accelerator.unwrap_model(model).disable_adapter() \
            if self.preference.reference == ADAPTER_OFF else nullcontext()
        with torch.no_grad(), adapters_off:
            return self._answer_logps(reference, inputs, positions, targets, rows, pairs, router=False)[0]

    def _add_metrics(self, training: bool, result, logps, pairs: int):
        values = (result.chosen_rewards, result.rejected_rewards, result.margins, result.accuracies,
                  logps[:pairs], logps[pairs:])
        sums = torch.stack([value.sum().float().cpu() for value in values] + [torch.tensor(float(pairs))])
        self.metric_sums[training] += sums

    def log(self, logs, *args, **kwargs):
        """Adds the preference metrics (train at a training log, eval_... at an evaluation's), means
        over the pairs of every process since the last such log."""
        for training, prefix, key in ((True, "", "loss"), (False, "eval_", "eval_loss")):
            if key in logs and self.metric_sums[training][-1] > 0:
                sums = self.accelerator.reduce(self.metric_sums[training].to(self.args.device), "sum").cpu()
                logs.update({prefix + name: float(value / sums[-1]) for name, value in zip(METRICS, sums)})
                self.metric_sums[training] = torch.zeros_like(self.metric_sums[training])
        super().log(logs, *args, **kwargs)
