"""Advantage and loss maths that do not depend on where training runs (the Tinker backend uses them directly).

The formulas are the ones TRL applies on the local backend (GRPOTrainer's group advantages, DPOTrainer's losses,
GSPO's sequence-level ratio), written here on plain tensors so the Tinker backend computes the same objectives and the
tests can check them against numbers worked out by hand. The local PPO driver's maths (GAE, whitening, the clipped
policy and value losses; TRL has no PPO any more) sit at the end, for the same reasons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fai_rl.stats import pass_at_k  # noqa: F401 - kept importable from here (workflows and tests used it from here)


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


def leave_one_out_advantages(rewards_n: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages (Ahmadian et al., 2024): each reward minus the mean of the other `group_size - 1` rewards of
    its group, r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_j r_j); unscaled, as TRL's RLOOTrainer by default.

    `rewards_n` holds consecutive groups of `group_size` (at least 2) completions of the same prompt.
    """
    if group_size < 2 or rewards_n.numel() % group_size:
        raise ValueError(f"{rewards_n.numel()} rewards do not split into groups of {group_size} (at least 2)")
    grouped_gk = rewards_n.view(-1, group_size).float()
    others_gk = (grouped_gk.sum(dim=1, keepdim=True) - grouped_gk) / (group_size - 1)
    return (grouped_gk - others_gk).reshape(-1)


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


# --------------------------------------------------------------------------------------------------------------------
# PPO (fai_rl.backends.local.ppo): GAE, whitening, the per-token KL penalty, the clipped policy and value losses.
# Small pure functions on tensors. Masks are 1.0 on real completion tokens, 0.0 on padding after EOS.


def masked_mean(x_bt: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1."""
    return (x_bt * mask_bt).sum() / mask_bt.sum().clamp(min=1)


def masked_whiten(x_bt: torch.Tensor, mask_bt: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x normalised to zero mean and unit variance over the masked positions (padding stays 0)."""
    mean = masked_mean(x_bt, mask_bt)
    var = masked_mean((x_bt - mean) ** 2, mask_bt)
    whitened = (x_bt - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_bt


def compute_gae(
    rewards_bt: torch.Tensor, values_bt: torch.Tensor, mask_bt: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (advantages + values).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, with V and A zero after the last
    real token (the episode ends at EOS or at max_completion_length). The mask is a prefix: padding only at the end.
    """
    rewards_bt, values_bt = rewards_bt * mask_bt, values_bt * mask_bt
    advantages_bt = torch.zeros_like(rewards_bt)
    next_value_b = torch.zeros_like(rewards_bt[:, 0])
    next_advantage_b = torch.zeros_like(rewards_bt[:, 0])
    for t in reversed(range(rewards_bt.shape[1])):
        delta_b = rewards_bt[:, t] + gamma * next_value_b - values_bt[:, t]
        next_advantage_b = delta_b + gamma * lam * next_advantage_b
        advantages_bt[:, t] = next_advantage_b
        next_value_b = values_bt[:, t]
    advantages_bt = advantages_bt * mask_bt
    return advantages_bt, (advantages_bt + values_bt) * mask_bt


def per_token_rewards(
    score_b: torch.Tensor,
    logprobs_bt: torch.Tensor,
    ref_logprobs_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """-kl_coef * (logprob - ref_logprob) on every real token, plus the sequence score on the last real token."""
    rewards_bt = -kl_coef * (logprobs_bt - ref_logprobs_bt) * mask_bt
    last_b = mask_bt.sum(dim=1).long().clamp(min=1) - 1
    rewards_bt[torch.arange(len(score_b)), last_b] += score_b
    return rewards_bt


def policy_loss(
    new_logprobs_bt: torch.Tensor,
    old_logprobs_bt: torch.Tensor,
    advantages_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean of max(-A r, -A clip(r, 1 - c, 1 + c)); also the clipped fraction and approx KL.

    approx_kl is 0.5 * mean(log r ** 2), the estimate Huang et al. 2024 log to watch how far an update strays.
    """
    log_ratio_bt = new_logprobs_bt - old_logprobs_bt
    ratio_bt = torch.exp(log_ratio_bt)
    unclipped_bt = -advantages_bt * ratio_bt
    clipped_bt = -advantages_bt * torch.clamp(ratio_bt, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped_bt, clipped_bt), mask_bt)
    clipfrac = masked_mean((clipped_bt > unclipped_bt).float(), mask_bt)
    approx_kl = 0.5 * masked_mean(log_ratio_bt.detach() ** 2, mask_bt)
    return loss, clipfrac.detach(), approx_kl


def value_loss(
    new_values_bt: torch.Tensor,
    old_values_bt: torch.Tensor,
    returns_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip kept within cliprange_value of the old V; and clipfrac."""
    clipped_bt = old_values_bt + torch.clamp(new_values_bt - old_values_bt, -cliprange_value, cliprange_value)
    unclipped_err_bt = (new_values_bt - returns_bt) ** 2
    clipped_err_bt = (clipped_bt - returns_bt) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err_bt, clipped_err_bt), mask_bt)
    clipfrac = masked_mean((clipped_err_bt > unclipped_err_bt).float(), mask_bt)
    return loss, clipfrac.detach()


def explained_variance(values_bt: torch.Tensor, returns_bt: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns): how much of the returns the critic predicts (1 best, <= 0 useless).

    The value loss alone also tracks how noisy the returns are (with 0/1 rewards it grows with p(1 - p) as the
    reward rises), so this is the number that says whether the critic is learning.
    """
    def var(x_bt):
        return masked_mean((x_bt - masked_mean(x_bt, mask_bt)) ** 2, mask_bt)

    return 1 - var(returns_bt - values_bt) / var(returns_bt).clamp(min=1e-8)


def token_logprobs(logits_btv: torch.Tensor, tokens_bt: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature), as the picked logit minus logsumexp (no log-softmax kept)."""
    logits_btv = logits_btv.float() / temperature
    picked_bt = logits_btv.gather(-1, tokens_bt.unsqueeze(-1)).squeeze(-1)
    return picked_bt - torch.logsumexp(logits_btv, dim=-1)


def entropy(logits_btv: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of softmax(logits)."""
    logits_btv = logits_btv.float()
    probs_btv = torch.softmax(logits_btv, dim=-1)
    return torch.logsumexp(logits_btv, dim=-1) - (probs_btv * logits_btv).sum(-1)
