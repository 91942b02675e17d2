"""One matmul where transformers runs several on the same input: q/k/v of attention, gate/up of the MLP.

Llama, Qwen2/3, Mistral and their kin project each decoder layer's normed hidden state three times for attention
(q_proj, k_proj, v_proj) and twice for the MLP (gate_proj, up_proj), one small linear each. At decode time (64 rows,
one token each) every linear is a kernel launch that reads a few MB, so the step is bound by the number of kernels,
not by bytes; in training the input is read once per linear and each backward pass adds the input gradients up.
Here the first linear of a group computes the whole group's output with one matmul on the concatenated weights and
hands the others their slices; the others check that they are called on the same tensor (they are, in that order,
in every model above) and otherwise compute their own. Same dot products, so the same values up to the matmul's
summation order (tests/test_fused.py: fp32 outputs and gradients equal the unfused model's).

Two ways to get the concatenated weight:
- `fuse(model)` (training): torch.cat of the live parameters inside the forward, so gradients flow back to each
  parameter as usual. The cat costs one copy of the grouped weights per forward (~0.6 GB for a 0.6B model, well
  under a millisecond), nothing is stored, and state dicts, checkpoints and optimizers see the model unchanged.
- `DecodeWeights(model)` (sampling, no grad): the cat is kept in buffers with fixed addresses, refreshed by `copy()`
  before each generate call (the weights change between RL steps), so a captured CUDA graph reads the current
  weights. One extra copy of the grouped weights in memory.

A group is fused only where every member is a plain float Linear (or a PEFT LoRA layer whose adapters are off, as
when the decoder samples from merged weights) with bias on all members or none; anything else (quantised layers,
active unmerged adapters, ZeRO-3 shards) keeps its own linears.
"""

from __future__ import annotations

import torch

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _plain_linear(module, lora_as_base: bool = False) -> torch.nn.Linear | None:
    """The nn.Linear computing `module`'s output: itself, or a LoRA layer's base while its adapters are off (or
    merged; with `lora_as_base`, whatever their state now)."""
    if type(module) is torch.nn.Linear:
        return module
    base = getattr(module, "base_layer", None)
    if base is not None and type(base) is torch.nn.Linear and hasattr(module, "lora_A"):
        return base if lora_as_base or not _adapters_on(module) else None
    return None


def _adapters_on(module) -> bool:
    """A LoRA layer whose adapters change its output now (on, unmerged); False for anything else."""
    if not hasattr(module, "lora_A"):
        return False
    active = not module.disable_adapters and any(name in module.lora_A for name in module.active_adapters)
    return active and not module.merged


def _fusable_groups(model, lora_as_base: bool = False):
    """(parent module, member names, their nn.Linears) for every group whose members can share one matmul."""
    found = []
    for parent in model.modules():
        for names in GROUPS:
            members = [getattr(parent, n, None) for n in names]
            if any(m is None for m in members):
                continue
            linears = [_plain_linear(m, lora_as_base) for m in members]
            if any(lin is None for lin in linears):
                continue
            w = [lin.weight for lin in linears]
            if not w[0].is_floating_point() or w[0].dim() != 2 or w[0].numel() == 0 or \
                    any(x.dtype != w[0].dtype or x.device != w[0].device or x.shape[1] != w[0].shape[1] for x in w):
                continue  # quantised, sharded (ZeRO-3 leaves 0-element placeholders) or mismatched
            if len({lin.bias is None for lin in linears}) != 1:
                continue
            found.append((parent, names, linears))
    return found


class _Group:
    """One fused group: its member modules, where the concatenated weight comes from, and the slices of the last
    input not yet handed out. While `enabled` is False the members run their own (class) forwards."""

    def __init__(self, members, linears, weight_fn, bias_fn, enabled: bool = True):
        self.members, self.linears, self.weight_fn, self.bias_fn = members, linears, weight_fn, bias_fn
        self.sizes = [lin.out_features for lin in linears]
        self.enabled = enabled
        self.x, self.parts = None, None

    def forward(self, i: int, x):
        if not self.enabled:
            return type(self.members[i]).forward(self.members[i], x)
        if i == 0:
            out = torch.nn.functional.linear(x, self.weight_fn(), self.bias_fn())
            self.x, self.parts = x, list(out.split(self.sizes, dim=-1))
        elif self.x is not x or self.parts is None:  # not called right after the first on the same input
            lin = self.linears[i]
            return torch.nn.functional.linear(x, lin.weight, lin.bias)
        part = self.parts[i]
        if i == len(self.sizes) - 1:
            self.x, self.parts = None, None  # every slice handed out: drop the references
        return part

    def install(self) -> None:
        for i, module in enumerate(self.members):
            module.forward = (lambda x, _i=i, _g=self: _g.forward(_i, x))
            module._fai_rl_fused = self

    def uninstall(self) -> None:
        for module in self.members:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_fai_rl_fused", None)


def fuse(model) -> int:
    """Fuse every fusable group of a model being trained (torch.cat of the live weights per forward); returns how
    many groups. Idempotent; `unfuse(model)` restores the plain forwards."""
    count = 0
    for parent, names, linears in _fusable_groups(model):
        members = [getattr(parent, n) for n in names]
        count += 1
        if "_fai_rl_fused" in members[0].__dict__:
            continue
        weights = [lin.weight for lin in linears]
        biases = [lin.bias for lin in linears]
        _Group(members, linears, lambda w=weights: torch.cat(w, dim=0),
               (lambda b=biases: torch.cat(b, dim=0)) if biases[0] is not None else (lambda: None)).install()
    return count


def unfuse(model) -> None:
    for module in model.modules():
        group = module.__dict__.get("_fai_rl_fused")
        if group is not None:
            group.uninstall()


class DecodeWeights:
    """Fused groups for sampling: the concatenated weights live in buffers that keep their addresses, so a CUDA
    graph captured over them stays valid. Entering (`with weights:`) refreshes them from the current weights and
    turns the groups on; leaving turns them off, and the model is unchanged outside (a flag, not a re-install, so
    a step compiled inside keeps its guards).

    A LoRA member's slice is its base weight plus its active adapters' delta (merged here: the group's own matmul
    replaces the adapter's), added when the adapter is on, or always with `merge_lora` (set by GRPO's sampling,
    which turns the adapters off for the call and wants the adapted policy). So grouped layers need no separate
    merged copy, and a LoRA model samples through one matmul per group.
    """

    def __init__(self, model, merge_lora: bool = False):
        """`model` None: no groups (a decoder that does not fuse). Groups fuse() made for training are taken over
        inside the context (their weight then comes from the buffer, not from a cat per step)."""
        self.merge_lora = merge_lora
        self.groups: list[tuple[_Group, torch.Tensor, torch.Tensor | None, tuple]] = []
        self._saved: list[tuple] = []
        with torch.no_grad():
            for parent, names, linears in _fusable_groups(model, lora_as_base=True) if model is not None else ():
                members = [getattr(parent, n) for n in names]
                weight = torch.empty(sum(lin.out_features for lin in linears), linears[0].in_features,
                                     dtype=linears[0].weight.dtype, device=linears[0].weight.device)
                bias = None if linears[0].bias is None else torch.empty(weight.shape[0], dtype=linears[0].bias.dtype,
                                                                        device=weight.device)
                fns = (lambda w=weight: w, lambda b=bias: b)  # made once: a compiled step's guards see the same
                group = members[0].__dict__.get("_fai_rl_fused")
                if group is None:
                    group = _Group(members, linears, *fns, enabled=False)
                    group.install()
                self.groups.append((group, weight, bias, fns))

    @classmethod
    def of(cls, model) -> "DecodeWeights":
        """The model's own DecodeWeights, made once: every decoder sampling from a model shares its buffers."""
        weights = model.__dict__.get("_fai_rl_decode_weights")
        if weights is None:
            weights = model.__dict__["_fai_rl_decode_weights"] = cls(model)
        return weights

    def __len__(self) -> int:
        return len(self.groups)

    def members(self) -> set[int]:
        """ids of every module whose output a fused group computes."""
        return {id(m) for group, _, _, _ in self.groups for m in group.members}

    @torch.no_grad()
    def copy(self) -> None:
        for group, weight, bias, _ in self.groups:
            parts = weight.split(group.sizes, dim=0)
            for module, lin, part in zip(group.members, group.linears, parts):
                part.copy_(lin.weight)
                if module is not lin and not module.merged and (self.merge_lora or _adapters_on(module)):
                    for name in module.active_adapters:
                        if name in module.lora_A:
                            part.add_(module.get_delta_weight(name).to(part.dtype))
            if bias is not None:
                torch.cat([lin.bias for lin in group.linears], dim=0, out=bias)

    def __enter__(self):
        self.copy()
        self._saved = [(g.weight_fn, g.bias_fn, g.enabled) for g, _, _, _ in self.groups]
        for group, _, _, (weight_fn, bias_fn) in self.groups:
            group.weight_fn, group.bias_fn, group.enabled = weight_fn, bias_fn, True
        return self

    def __exit__(self, *exc):
        for (group, _, _, _), (weight_fn, bias_fn, enabled) in zip(self.groups, self._saved):
            group.weight_fn, group.bias_fn, group.enabled = weight_fn, bias_fn, enabled
            group.x, group.parts = None, None
        return False
