"""Variable-length attention for padding-free batches, from PyTorch itself (no flash-attn wheel needed).

A padding-free batch (TRL's padding-free collator) is its rows laid end to end in one sequence, with `cu_seq_lens_q`
/ `cu_seq_lens_k` (where each row starts) and `max_length_q` / `max_length_k` beside the input ids. SDPA cannot use
them: transformers gives it a dense block-diagonal mask over the whole sequence, so attention costs (sum of rows)^2
instead of the sum of row^2, and on the issue's ragged chat data that is slower than padding. flash-attention 2's
varlen kernel reads the boundaries directly, but its wheel is not installable everywhere; torch >= 2.10 ships the
same kind of kernel as `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16).

`ATTENTION` is registered with transformers' AttentionInterface: on CUDA with boundaries given it calls varlen_attn,
causal within each row; everything else (a padded batch, generation, CPU, fp32, dropout) goes to transformers' own
SDPA path with the mask transformers built for it, which is why the mask function registered beside it is SDPA's.
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
    """Register ATTENTION (and SDPA's mask for it) with transformers; returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers' attention-function contract: query (1, H, T, D), key/value (1, H_kv, T, D) -> ((1, T, H, D), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_q = kwargs.get("cu_seq_lens_q")
    kernel = varlen_kernel()
    if (cu_q is None or kernel is None or query.shape[0] != 1 or not query.is_cuda or dropout > 0
            or query.dtype not in (torch.float16, torch.bfloat16)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    varlen_attn, has_is_causal, has_gqa = kernel
    q = query[0].transpose(0, 1)  # (T, H, D)
    k = key[0].transpose(0, 1).to(q.dtype)
    v = value[0].transpose(0, 1).to(q.dtype)
    extra = {"is_causal": True} if has_is_causal else {"window_size": (-1, 0)}  # causal within each row
    if k.shape[1] != q.shape[1]:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    out = varlen_attn(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), int(kwargs["max_length_q"]),
                      int(kwargs.get("max_length_k", kwargs["max_length_q"])), scale=scaling, **extra)
    return out.unsqueeze(0), None
