"""Variable-length attention for padding-free batches, from PyTorch itself (no flash-attn wheel needed).

A padding-free batch (TRL's padding-free collator) is its rows laid end to end in one sequence, with `cu_seq_lens_q`
/ `cu_seq_lens_k` (where each row starts) and `max_length_q` / `max_length_k` beside the input ids. SDPA cannot use
them: transformers gives it a dense block-diagonal mask over the whole sequence, so attention costs (sum of rows)^2
instead of the sum of row^2, and on the issue's ragged chat data that is slower than padding. flash-attention 2's
varlen kernel reads the boundaries directly, but its wheel is not installable everywhere; torch >= 2.10 ships the
same kind of kernel as `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16).

`ATTENTION` is registered with transformers' AttentionInterface. A padding-free batch (no attention mask, one row,
boundaries from cu_seq_lens or, failing those, from where the position ids restart) runs varlen_attn on CUDA in
fp16/bf16, and elsewhere (CPU, fp32) one SDPA call per row: exact, and O(sum of row^2) there too. Everything else (a
padded batch with its mask, generation) goes to transformers' own SDPA path. The mask function registered beside it
is SDPA's, except that a batch without padding gets no mask at all: building transformers' block-diagonal mask over
a 32k-token row cost more than the attention itself (measured: 75k vs 91k tokens/s on fixed 2,048-token rows).
"""

from __future__ import annotations

import functools
import inspect

ATTENTION = "fai_rl_varlen"


@functools.cache
def varlen_kernel():
    """torch.nn.attention.varlen.varlen_attn and the keyword names this torch gives it, or None without one."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "is_causal" in params, "enable_gqa" in params


def available() -> bool:
    """A CUDA GPU and a torch with varlen_attn: padding-free batches run without any padding compute."""
    import torch

    return torch.cuda.is_available() and varlen_kernel() is not None


def register() -> str:
    """Register ATTENTION (and its mask function) with transformers; returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION, _mask)
    return ATTENTION


def _mask(*args, **kwargs):
    """SDPA's mask where the batch has padding; none where it has not (attention then finds the rows itself)."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


def _boundaries(query, kwargs):
    """(row starts + end as a tensor, longest row) of a padding-free batch, or None when the batch is one ordinary
    sequence or several padded ones. TRL's collator gives both (no device sync); else they come from the position ids."""
    import torch

    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is not None and longest is not None:
        return cu, int(longest)
    pos = kwargs.get("position_ids")
    if pos is None or pos.shape[0] != 1 or query.shape[0] != 1:
        return None
    starts = (pos[0] == 0).nonzero().flatten()
    if len(starts) <= 1:
        return None  # one sequence: causal attention as usual
    cu = torch.cat([starts, starts.new_tensor([pos.shape[1]])])
    return cu, int(cu.diff().max())


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers' attention-function contract: query (B, H, T, D), key/value (B, H_kv, T, D) -> ((B, T, H, D), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    found = _boundaries(query, kwargs) if attention_mask is None and query.shape[2] > 1 else None
    if found is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu, longest = found
    kernel = varlen_kernel()
    gqa = query.shape[1] // key.shape[1]
    if kernel is not None and query.is_cuda and dropout == 0 and query.dtype in (torch.float16, torch.bfloat16):
        varlen_attn, has_is_causal, has_gqa = kernel
        q = query[0].transpose(0, 1)  # (T, H, D)
        k = key[0].transpose(0, 1).to(q.dtype)
        v = value[0].transpose(0, 1).to(q.dtype)
        extra = {"is_causal": True} if has_is_causal else {"window_size": (-1, 0)}  # causal within each row
        if gqa > 1:
            if has_gqa:
                extra["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(gqa, dim=1), v.repeat_interleave(gqa, dim=1)
        cu32 = cu.to(device=q.device, dtype=torch.int32)
        out = varlen_attn(q, k, v, cu32, cu32, longest, longest, scale=scaling, **extra)
        return out.unsqueeze(0), None
    # one SDPA call per row: exact anywhere, no mask over the whole batch
    if gqa > 1:
        key, value = key.repeat_interleave(gqa, dim=1), value.repeat_interleave(gqa, dim=1)
    bounds = cu.tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout if module.training else 0.0,
        is_causal=True, scale=scaling) for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None
