"""Direct preference optimisation's loss (`--method dpo`), from each answer's
log-probability under the model being trained (policy) and under the reference (the starting
model): per pair, with margin m = (policy_chosen - policy_rejected) - (reference_chosen -
reference_rejected), the sigmoid loss -log sigmoid(beta m) (Rafailov et al.), or with label
smoothing e (conservative DPO) -(1 - e) log sigmoid(beta m) - e log sigmoid(-beta m). With the
reference equal to the policy m is 0 and the loss ln 2. The implicit rewards beta (policy -
reference) of each answer are what the logs report."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BETA = 0.1  # MiniCPM-V's authors' RLAIF-V alignment


@dataclass
class PreferenceLosses:
    losses: torch.Tensor  # [pairs]
    chosen_rewards: torch.Tensor  # [pairs], beta (policy - reference) of the chosen answer, no gradient
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1 where the chosen answer's reward is above the rejected one's."""
        return (self.margins > 0).float()


def check_settings(beta: float, label_smoothing: float):
    if beta <= 0:
        raise ValueError(f"--dpo_beta must be positive, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"--dpo_label_smoothing must be in [0, 0.5), got {label_smoothing}")


def sequence_logps(token_logps: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """[count] sums of the trained tokens' log-probs [N] of each sequence (rows [N]: which)."""
    return torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float = DEFAULT_BETA,
               label_smoothing: float = 0.0) -> PreferenceLosses:
    """The per-pair loss of [pairs] summed answer log-probs (the reference's carry no gradient)."""
    check_settings(beta, label_smoothing)
    reference_chosen, reference_rejected = reference_chosen.detach(), reference_rejected.detach()
    margin = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return PreferenceLosses(losses, beta * (policy_chosen - reference_chosen).detach(),
                            beta * (policy_rejected - reference_rejected).detach())
