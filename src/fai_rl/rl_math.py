"""Advantage and loss maths that do not depend on where training runs (the Tinker backend uses them directly).

The formulas are the ones TRL applies on the local backend (GRPOTrainer's group advantages, DPOTrainer's losses,
GSPO's sequence-level ratio), written here on plain tensors so the Tinker backend computes the same objectives and the
tests can check them against numbers worked out by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_advantages(rewards_n: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's (or batch's) std, or not at all.

    `rewards_n` holds consecutive groups of `group_size` completions of the same prompt. A group whose rewards are
    all equal gets advantage 0 (nothing to learn from it). std is the unbiased one, as in TRL.
    """
    if rewards_n.numel() % group_size:
        raise ValueError(f"{rewards_n.numel()} rewards do not split into groups of {group_size}")
    grouped_gk = rewards_n.view(-1, group_size).float()
    centred_gk = grouped_gk - grouped_gk.mean(dim=1, keepdim=True)
    if scale == "group":
        std_gk = grouped_gk.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped_gk)
    elif scale == "batch":
        std_gk = torch.full_like(grouped_gk, grouped_gk.std().item() if grouped_gk.numel() > 1 else 0.0)
    elif scale == "none":
        return centred_gk.reshape(-1)
    else:
        raise ValueError(f"scale must be group, batch or none, not {scale!r}")
    return (centred_gk / (std_gk + 1e-4)).reshape(-1)


def dpo_losses(
    chosen_logps_b: torch.Tensor,
    rejected_logps_b: torch.Tensor,
    ref_chosen_logps_b: torch.Tensor,
    ref_rejected_logps_b: torch.Tensor,
    *,
    beta: float,
    loss_types: list[str],
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_lengths_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over the batch (the weighted sum of `loss_types`) and the metrics TRL logs.

    Inputs are summed log-probabilities of each completion under the policy and the reference. Losses:
      sigmoid  -(1-ls) log s(beta h) - ls log s(-beta h), with h the log-ratio margin (Rafailov et al., 2023; cDPO)
      hinge    relu(1 - beta h) (SLiC)
      ipo      (h - 1 / (2 beta))^2 (Azar et al., 2023; log-probs averaged per token as in TRL)
      sft      the chosen completion's negative log-likelihood per token (RPO's extra term)
    """
    weights = loss_weights or [1.0] * len(loss_types)
    chosen_ratio_b = chosen_logps_b - ref_chosen_logps_b
    rejected_ratio_b = rejected_logps_b - ref_rejected_logps_b
    margin_b = chosen_ratio_b - rejected_ratio_b
    lengths_b = chosen_lengths_b if chosen_lengths_b is not None else torch.ones_like(chosen_logps_b)
    total = chosen_logps_b.new_zeros(())
    for loss_type, weight in zip(loss_types, weights, strict=True):
        if loss_type == "sigmoid":
            loss_b = (-(1 - label_smoothing) * F.logsigmoid(beta * margin_b)
                      - label_smoothing * F.logsigmoid(-beta * margin_b))
        elif loss_type == "hinge":
            loss_b = torch.relu(1 - beta * margin_b)
        elif loss_type == "ipo":
            loss_b = (margin_b / lengths_b - 1 / (2 * beta)) ** 2
        elif loss_type == "sft":
            loss_b = -chosen_logps_b / lengths_b
        else:
            raise ValueError(f"DPO loss {loss_type!r} is not computed here")
        total = total + weight * loss_b.mean()
    metrics = {
        "rewards/chosen": (beta * chosen_ratio_b).mean().item(),
        "rewards/rejected": (beta * rejected_ratio_b).mean().item(),
        "rewards/margins": (beta * margin_b).mean().item(),
        "rewards/accuracies": (margin_b > 0).float().mean().item(),
    }
    return total, metrics


def sequence_ratio_loss(
    logprobs_t: list[torch.Tensor],
    old_logprobs_t: list[torch.Tensor],
    advantages: list[float],
    *,
    epsilon: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al., 2025): one clipped importance ratio per sequence, the geometric mean of the token ratios.

    s = exp(mean_t(log pi(y_t) - log pi_old(y_t))) over the completion tokens; loss = -min(s A, clip(s, 1-eps_lo,
    1+eps_hi) A), averaged over sequences. Each tensor holds one completion's per-token log-probs.
    """
    losses, clipped = [], 0
    for new_t, old_t, advantage in zip(logprobs_t, old_logprobs_t, advantages, strict=True):
        ratio = torch.exp((new_t - old_t.detach()).mean())
        bounded = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
        losses.append(-torch.minimum(ratio * advantage, bounded * advantage))
        clipped += int(bool((ratio != bounded).item()))
    loss = torch.stack(losses).mean()
    return loss, {"clip_ratio": clipped / max(1, len(losses))}


def keyed_group_advantages(rewards: list[float], keys: list, norm_by_std: bool = True) -> list[float]:
    """GRPO advantages over groups named by `keys` (any hashable; groups may differ in size and interleave).

    rLLM's estimator for workflow trajectories: reward minus its group's mean, divided by the group's population std
    when norm_by_std and that std is above 1e-8 (a group whose rewards are all equal gets 0). A group of one has
    nothing to compare with and gets 0 (rLLM gives it its raw reward: mean 0, std 1).
    """
    if len(rewards) != len(keys):
        raise ValueError(f"{len(rewards)} rewards for {len(keys)} keys")
    members: dict = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    advantages = [0.0] * len(rewards)
    for indices in members.values():
        if len(indices) < 2:
            continue
        group = torch.tensor([float(rewards[i]) for i in indices], dtype=torch.float64)
        centred = group - group.mean()
        std = group.std(unbiased=False).item()
        scaled = centred / std if norm_by_std and std > 1e-8 else centred
        for i, a in zip(indices, scaled.tolist(), strict=True):
            advantages[i] = a
    return advantages


def token_policy_loss(
    logprobs_t: list[torch.Tensor],
    old_logprobs_t: list[torch.Tensor],
    advantages: list[float],
    *,
    epsilon: float,
    epsilon_high: float,
    total_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped token-level objective, normalised over all tokens of the batch (DAPO's token-level mean).

    Per token: -min(r A, clip(r, 1-eps_lo, 1+eps_hi) A) with r = exp(log pi - log pi_old); summed over every
    completion token of every sequence and divided by the number of tokens, so long and short completions weigh
    the same per token. Each tensor holds one completion's per-token log-probs. `total_tokens` divides instead of
    the tokens given here: the batch's count when it is split into micro-batches, or when sequences with advantage 0
    (no gradient) are left out.
    """
    losses, clipped, tokens = [], 0.0, 0
    for new_t, old_t, advantage in zip(logprobs_t, old_logprobs_t, advantages, strict=True):
        ratio_t = torch.exp(new_t - old_t.detach())
        bounded_t = torch.clamp(ratio_t, 1 - epsilon, 1 + epsilon_high)
        losses.append(-torch.minimum(ratio_t * advantage, bounded_t * advantage).sum())
        clipped += float((ratio_t != bounded_t).sum().item())
        tokens += new_t.numel()
    loss = torch.stack(losses).sum() / max(1, total_tokens or tokens)
    return loss, {"clip_ratio": clipped / max(1, tokens)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    import math

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
