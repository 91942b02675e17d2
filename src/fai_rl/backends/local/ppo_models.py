"""The models of local PPO: the policy with its critic, the frozen reference, and their files in a checkpoint.

The critic is a scalar head, either on the policy's own last hidden state (one forward pass gives logits and values)
or on a separate value model's backbone (model.value_model_name); see fai_rl.backends.local.ppo for why each. Policy
and critic are one nn.Module, so one optimizer and one accelerator.prepare (DDP, DeepSpeed) cover both. With LoRA the
reference is the policy with its adapter switched off, so there is no reference module.

A checkpoint holds the policy as saved by transformers/peft, the value model's backbone under value_model/ and the
value head as value_head.pt; build_models reads back exactly what save_models writes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fai_rl.config.schema import Recipe
from fai_rl.models.load import load_causal_lm, lora_config, resolve_model_path, torch_dtype


class PolicyAndCritic(nn.Module):
    """The policy LM and its critic: a scalar head on a separate backbone, or on the policy's own last hidden state."""

    def __init__(self, policy: nn.Module, value_backbone: nn.Module | None, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_backbone = value_backbone  # None: the value head reads the policy's hidden states (shared trunk)
        self.config = policy.config  # what DeepSpeed sizes "auto" buckets from (hidden_size)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.value_head.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids_bs, attention_mask_bs, n_completion: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_btv, values_bt) for the last n_completion tokens: each predicted from the position before it."""
        shared = self.value_backbone is None
        out = self.policy(
            input_ids=input_ids_bs,
            attention_mask=attention_mask_bs,
            position_ids=position_ids(attention_mask_bs),
            output_hidden_states=shared,
            logits_to_keep=n_completion + 1,
            use_cache=False,
        )
        if shared:
            hidden_bsh = out.hidden_states[-1]
        else:
            hidden_bsh = self.value_backbone(
                input_ids=input_ids_bs, attention_mask=attention_mask_bs, position_ids=position_ids(attention_mask_bs)
            ).last_hidden_state
        values_bt = self.value_head(hidden_bsh[:, -n_completion - 1 : -1].to(self.value_head.weight.dtype))
        return out.logits[:, :-1], values_bt.squeeze(-1).float()


def position_ids(attention_mask_bs: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token, so left-padded prompts get the positions generate() gave them."""
    return (attention_mask_bs.long().cumsum(-1) - 1).clamp(min=0)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (Huang et al.): the logprobs of an update must match the ones of the rollout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def build_models(recipe: Recipe, start: Path | None) -> tuple[PolicyAndCritic, nn.Module | None]:
    """(policy + critic, frozen reference or None when LoRA's adapter-off policy is the reference).

    `start` is a checkpoint to continue from; the reference always comes from model.base_model_name (or the start
    model.init_from names, fai_rl.models.init_from).
    """
    from transformers import AutoModel

    m = recipe.model
    if m.use_lora:
        from peft import PeftModel, get_peft_model

        base = load_causal_lm(m)
        if start is None:
            policy = get_peft_model(base, lora_config(m))
        else:
            policy = PeftModel.from_pretrained(base, start, is_trainable=True)
        reference = None
    else:
        policy = load_causal_lm(m if start is None else replace(m, base_model_name=str(start), init_from=None))
        reference = load_causal_lm(m).requires_grad_(False).eval()
    if recipe.training.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    value_backbone = None
    # The critic is AutoModel's backbone of value_model_name plus our fresh value_head, trained from the first step.
    # FAI-RL's PPO also scored rewards with that model (config/fai_rl.py copies it into reward_model_name when there
    # are no rewards:); a causal-LM checkpoint has no trained score head, so the reward loader refuses it
    # (rewards/reward_model.py) instead of scoring with a freshly initialised head.
    if m.value_model_name is not None:
        path = start / "value_model" if start is not None else resolve_model_path(m.value_model_name)
        value_backbone = AutoModel.from_pretrained(path, dtype=torch_dtype(m), trust_remote_code=m.trust_remote_code)
    config = (value_backbone or policy).config
    hidden = config.get_text_config().hidden_size
    model = PolicyAndCritic(policy, value_backbone, hidden)
    if start is not None:
        model.value_head.load_state_dict(torch.load(start / "value_head.pt", map_location="cpu"))
    disable_dropout(model)
    return model, reference


def reference_logits(reference: nn.Module | None, model: PolicyAndCritic, input_ids_bs, attention_mask_bs,
                     n: int) -> torch.Tensor:
    """The reference policy's logits for the last n tokens: `reference`, or with LoRA (reference None) the policy
    with its adapter off."""
    kwargs = {"input_ids": input_ids_bs, "attention_mask": attention_mask_bs, "use_cache": False,
              "position_ids": position_ids(attention_mask_bs), "logits_to_keep": n + 1}
    if reference is not None:
        return reference(**kwargs).logits[:, :-1]
    with model.policy.disable_adapter():  # LoRA: the base model is the reference
        return model.policy(**kwargs).logits[:, :-1]


def save_models(model: PolicyAndCritic, path: Path, state: dict | None, policy_only: bool = False) -> None:
    """Policy (HF model or adapter) into path; also value_model/ and value_head.pt unless policy_only.

    `state` is the full state dict gathered under ZeRO-3 (None otherwise: each module saves its own weights).
    """

    def part(prefix: str) -> dict | None:
        return None if state is None else {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    model.policy.save_pretrained(path, state_dict=part("policy."))
    if policy_only:
        return
    if model.value_backbone is not None:
        model.value_backbone.save_pretrained(path / "value_model", state_dict=part("value_backbone."))
    torch.save(part("value_head.") or model.value_head.state_dict(), path / "value_head.pt")


def critic_name(recipe: Recipe) -> str:
    """The critic in words, for the start-up line, --dry-run and trainer_state.json."""
    value = recipe.model.value_model_name
    return f"value model {value} + scalar head" if value else "value head on the policy backbone"
