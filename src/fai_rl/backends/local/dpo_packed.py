"""Padding-free DPO: every chosen and rejected sequence of a batch laid end to end in one row.

TRL 1.16's DPOTrainer pads a batch of 2B sequences (B chosen, then B rejected) to its longest, and its own
`padding_free` is switched off ("temporarily unavailable after a refactor"). On ragged preference data most of that
padded compute is waste. The departure from TRL here is only in how the model is run, not in what is computed:

  - `PackedPairs` wraps TRL's preference collator: the padded batch stays as it is (input_ids, attention_mask,
    completion_mask: TRL's loss code reads them unchanged) and gains `packed`, where the real tokens lie (their flat
    indices in the padded batch, position ids restarting at 0 per sequence, cu_seq_lens, the longest sequence), all
    computed on the CPU in the data loader, so running packed costs the GPU no host sync.
  - `pack_forward` wraps the model's forward (outside TRL's fused LM head): a call with `packed` and
    `fused_lm_head=True` gathers the real tokens into one (1, N) row, runs it with the position ids, cu_seq_lens_q/k
    and max_length_q/k the varlen attention reads (fai_rl.models.varlen; flash-attention 2 reads the same), scores
    each token against the next token of its own sequence (`shift_labels`; a sequence's last token has none), and
    scatters every per-token output back into TRL's padded (2B, T - 1) layout, zeros on padding as TRL has there.

So every forward TRL makes (the policy, the frozen reference copy, the adapter-disabled policy of LoRA, the
`precompute_ref_log_probs` pass, evaluation) runs packed, and the summed completion log-probs, losses (every
loss_type), WPO weights and metrics come out of TRL's own code (tests/test_padding_free_dpo.py: equal to the padded
path in fp32). A batch whose 2B sequences are all one length has nothing to remove and stays an ordinary batch.
"""

from __future__ import annotations

import functools

from trl import DPOTrainer

IGNORE = -100
# FusedCausalLMOutput's per-token fields (TRL's add_fused_lm_head): each is unpacked into the padded layout
PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


class PackedPairs:
    """TRL's preference collator plus `packed`: where the batch's real tokens lie, for pack_forward."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self.inner(examples)
        mask_bt = batch["attention_mask"].bool()  # right-padded: each row's ones, then zeros
        lengths = mask_bt.sum(dim=1)
        if bool((lengths == mask_bt.shape[1]).all()):
            return batch  # no padding: SDPA's batched kernel beats varlen there (see sft.PaddedWhenEven)
        positions_bt = torch.arange(mask_bt.shape[1]).expand_as(mask_bt)
        batch["packed"] = {
            "index": mask_bt.reshape(-1).nonzero().squeeze(1),  # flat positions of the real tokens, row by row
            "position_ids": positions_bt[mask_bt][None],  # (1, N), restarting at 0 for every sequence
            "cu_seq_lens": torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32),
            "max_length": int(lengths.max()),  # a python int: the varlen kernel needs it on the host
        }
        return batch


def pack_forward(model) -> None:
    """Wrap `model.forward` (a PreTrainedModel that TRL gave its fused LM head) so that calls carrying `packed` run
    padding-free. Idempotent; a call without `packed` (or without the fused head) is the model's own forward."""
    inner = model.forward
    if getattr(inner, "packs_pairs", False):
        return

    @functools.wraps(inner)  # keeps the signature generate() validates its kwargs against
    def forward(*args, packed=None, **kwargs):
        if packed is None or not kwargs.get("fused_lm_head"):
            return inner(*args, **kwargs)
        return _packed_call(inner, packed, **kwargs)

    forward.packs_pairs = True
    model.forward = forward


def _packed_call(inner, packed: dict, input_ids, attention_mask, labels, **kwargs):
    """The fused-head forward of a padded (2B, T) batch, run as one (1, N) row; outputs in the padded layout."""
    import torch

    rows, width = input_ids.shape
    index, cu, longest = packed["index"], packed["cu_seq_lens"], packed["max_length"]
    # each token is scored against the next token of its own row (the padded path's shift); the last has none
    next_labels_bt = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    out = inner(
        input_ids=input_ids.reshape(-1)[index][None],
        position_ids=packed["position_ids"],
        shift_labels=next_labels_bt.reshape(-1)[index][None],
        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
        **kwargs,
    )

    def unpadded_to_padded(x):  # (1, N) -> (2B, T - 1), where the padded path puts the score of token t at t
        return x.new_zeros(rows * width).index_copy(0, index, x[0]).view(rows, width)[:, :-1]

    for name in PER_TOKEN:
        value = getattr(out, name)
        if value is not None:
            setattr(out, name, unpadded_to_padded(value))
    return out


def _core(model):
    """The PreTrainedModel TRL patched: through DDP / DeepSpeed wrappers (`.module`) and a peft model."""
    from accelerate.utils import is_peft_model

    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if is_peft_model(model) else model


class PackedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with each batch's chosen and rejected sequences run as one padding-free row (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pack_pairs()

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        self._pack_pairs()  # DPOTrainer.__init__ calls this before returning: the reference pass packs too
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _pack_pairs(self) -> None:
        if not isinstance(self.data_collator, PackedPairs):
            self.data_collator = PackedPairs(self.data_collator)
        for model in (self.model, self.ref_model):
            if model is not None:
                pack_forward(_core(model))
