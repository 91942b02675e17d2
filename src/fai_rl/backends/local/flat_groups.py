"""training.drop_zero_variance_groups on the local backend: DAPO's dynamic-sampling filter (Yu et al., 2025) over
TRL's GRPOTrainer / RLOOTrainer, as the Tinker driver applies it (fai_rl.backends.tinker.rl_metrics.drop_zero_variance).

A group whose rewards are all equal has advantage 0 for every completion: it adds no policy gradient, only KL terms
and tokens to the loss's denominator. After TRL scores a generation batch, those groups' completions are masked out
of the loss (their completion_mask zeroed), and every loss normalisation counts the kept ones only: the token-level
losses (dapo, cispo, vespo) through a recounted `num_items_in_batch`, bnpo through the mask itself, and the
per-sequence means (grpo, sapo, luspo, dr_grpo, RLOO) scaled by rows / kept rows of the micro-batch. When no
completion of an optimizer step is kept (on any process), the optimizer skips the step (no momentum, no weight
decay), as the Tinker driver sends no optim_step. Departure from DAPO: no resampling to refill the batch; the
dropped rows still go through the forward pass (TRL's batch shapes stay fixed). Logged per generation batch as
`groups_dropped` (the number of groups, the Tinker driver's name; TRL's `frac_reward_zero_std` is the fraction).
Under DeepSpeed the engine steps anyway (on zero gradients).
"""

from __future__ import annotations

from transformers import TrainerCallback

from fai_rl.backends.local.common import all_ranks_agree

# A group counts as flat when every advantage in it is this close to 0: exactly 0 for GRPO's (r - mean) / std; RLOO's
# leave-one-out baseline of equal rewards can differ from them by float rounding.
FLAT = 1e-6
KEPT = "fai_rl_kept"  # per-row 1/0 in TRL's batch dict, split and shuffled with the rows
PER_SEQUENCE_MEANS = ("grpo", "sapo", "luspo", "dr_grpo", "rloo")  # RLOOTrainer has no loss_type: its own mean


class DropFlatGroups:
    """Mixed in before GRPOTrainer / RLOOTrainer (see with_flat_groups_dropped)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept_tokens = 0  # loss tokens kept since the last optimizer step (this process)
        self.add_callback(SkipFlatSteps(self))

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out  # eval: every completion is scored, nothing is trained
        advantages = self.accelerator.gather(out["advantages"])  # groups may straddle processes
        flat_g = (advantages.view(-1, self.num_generations).abs() <= FLAT).all(dim=1)
        kept_b = (~flat_g).repeat_interleave(self.num_generations)
        rows = out["advantages"].shape[0]
        kept = kept_b[self.accelerator.process_index * rows:(self.accelerator.process_index + 1) * rows]
        out["completion_mask"] = out["completion_mask"] * kept.unsqueeze(1).to(out["completion_mask"].dtype)
        loss_mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
        if "num_items_in_batch" in out:  # the token-level losses' denominator: kept tokens of the whole batch
            out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        if out.get("old_logps") is not None:  # RLOO's sequence sums: over the kept tokens too, a ratio of 1 when dropped
            out["old_logps"] = out["old_logps"] * kept.to(out["old_logps"].dtype)
        out[KEPT] = kept.float()
        self._metrics["train"]["groups_dropped"].append(float(flat_g.sum().item()))
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kept = inputs.get(KEPT)  # read, not popped: with num_iterations > 1 TRL reuses the batch
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if kept is None:
            return loss
        mask = inputs["completion_mask"]
        self.kept_tokens += int(mask.sum().item())
        if getattr(self, "loss_type", "rloo") in PER_SEQUENCE_MEANS:
            n = float(kept.sum().item())
            if 0 < n < kept.numel():  # a mean over the micro-batch's rows: over its kept rows instead
                loss = loss * (kept.numel() / n)
        return loss


class SkipFlatSteps(TrainerCallback):
    """No optimizer step when no process kept a completion since the last one (gradients set to None: AdamW then
    leaves those parameters, their moments and weight decay alone)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        kept = all_ranks_agree(self.trainer.kept_tokens > 0)
        self.trainer.kept_tokens = 0
        if not kept and optimizer is not None and not self.trainer.is_deepspeed_enabled:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None


def with_flat_groups_dropped(trainer_class):
    """trainer_class (TRL's GRPOTrainer or RLOOTrainer) with DropFlatGroups mixed in."""
    return type(f"FlatGroupsDropped{trainer_class.__name__}", (DropFlatGroups, trainer_class), {})

