"""A decoder whose whole decode step is one CUDA graph: the sampling engine of local RL, PPO, workflows and eval.

HF `generate` is bound by its host loop, not by the GPU: per token it runs logits processors, stopping criteria
and cache bookkeeping in Python, with a host sync to ask whether every row has finished. Even with a static cache
and `torch.compile(mode="reduce-overhead")` a 0.6B model decodes at ~5.7 ms per token at batch 64 on an H200, while
reading its weights and KV cache takes well under 1 ms. Here the step's whole body is captured once per (batch,
cache length, sampling knobs) and replayed:

    forward one token through a static KV cache -> temperature / top-k / top-p -> draw (exponential race, i.e.
    argmax p_i / E_i with E_i ~ Exp(1), which picks i with probability p_i) -> log-prob under softmax(logits / T)
    -> rows that have stopped emit padding -> write token and log-prob at the step's column -> advance positions,
    cache index and attention mask, all in device tensors.

The host replays the graph `check_every` times between looks at "has every row stopped" (one sync per look). The
prompt (prefill) runs outside the graph, once per call. The attention mask is a 4-D additive mask over the cache
that transformers uses as given, so left padding needs no per-step mask building. Without CUDA (or when capture
fails, e.g. a quantised kernel that cannot be captured) the same step runs eagerly: identical tokens, no graph.

Greedy decoding gives HF generate's tokens (tests/test_decode.py, CPU); sampling follows the same distribution
(HF's top-k then top-p filtering of softmax(logits / T)). Graphs and their caches are kept for the last shape used,
so a training loop whose prompt batches fit one cache length captures once.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch

CACHE_ROUND = 128  # cache lengths are rounded up to this, so prompt batches of similar length share one graph
ATTENTION = "fai_rl_decode"  # the attention implementation the model runs under while the decoder samples


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             **kwargs):
    """Attention while decoding: one query token attends to the static cache with the query heads grouped under
    their key/value head, so grouped-query attention reads each cached key and value once.

    transformers' SDPA path repeats K and V for every query head when there is a mask (`repeat_kv`): at batch 64
    over a 512-slot cache that copy moves more bytes than the weights. Here the G query heads that share a KV head
    are the query length (no causal mask among them: they are one position), which is the same sum. Prompts
    (several query tokens) go to transformers' SDPA path unchanged. The mask is boolean, True where attended.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or attention_mask is None or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # head h reads KV head h // G, as repeat_kv lays them out. Written out rather than SDPA: for G (2-8) queries
    # per KV head SDPA picks a flash kernel tiled for 64+ queries, 45 us per layer at batch 64 over 512 slots on an
    # H200 (30% of a GRPO step); two batched matmuls and a softmax the compiler fuses: 2.73 -> 2.61 ms per token,
    # the step's attention 326 -> ~225 ms. (As broadcast products summed, which inductor makes one reduction
    # kernel each, it was slower: 3.49 ms.)
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
        else scores + attention_mask
    out = torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None




def register() -> str:
    """Register ATTENTION with transformers (its masks are given 4-D, so SDPA's mask function is never used)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


@dataclass(frozen=True)
class Knobs:
    """How the next token is drawn; temperature 0 is greedy."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0


def draw(logits_bv: torch.Tensor, knobs: Knobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token of each row and its log-prob under softmax(logits / T) (plain softmax when greedy).

    Top-k then top-p filtering as HF's warpers do it (a token is dropped when the tokens more probable than it
    already hold top_p of the mass); the log-prob is taken before filtering, as sampling.Completion documents.
    No host sync and no data-dependent shapes, so it can be captured in a CUDA graph.
    """
    logits_bv = logits_bv.float()
    if knobs.temperature <= 0:
        token_b = logits_bv.argmax(dim=-1)
        return token_b, torch.log_softmax(logits_bv, dim=-1).gather(-1, token_b[:, None])[:, 0]
    scaled_bv = logits_bv / knobs.temperature
    logprobs_bv = torch.log_softmax(scaled_bv, dim=-1)
    probs_bv = logprobs_bv.exp()
    if knobs.top_k and knobs.top_k < probs_bv.shape[-1]:
        kth_b1 = torch.topk(probs_bv, knobs.top_k, dim=-1).values[:, -1:]
        probs_bv = probs_bv.masked_fill(probs_bv < kth_b1, 0.0)
    if knobs.top_p < 1.0:
        sorted_bv, order_bv = torch.sort(probs_bv, dim=-1, descending=True)
        sorted_bv = sorted_bv / sorted_bv.sum(dim=-1, keepdim=True)
        above_bv = sorted_bv.cumsum(dim=-1) - sorted_bv  # mass of the tokens more probable than this one
        drop_bv = above_bv >= knobs.top_p
        drop_bv[:, 0] = False
        probs_bv = probs_bv.masked_fill(torch.zeros_like(drop_bv).scatter(-1, order_bv, drop_bv), 0.0)
    race_bv = torch.empty_like(probs_bv).exponential_()
    token_b = (probs_bv / race_bv).argmax(dim=-1)
    return token_b, logprobs_bv.gather(-1, token_b[:, None])[:, 0]


class _Step:
    """The buffers of one (batch, cache length) shape and the decode step over them, captured or eager."""

    def __init__(self, model, batch: int, cache_len: int, max_new: int, stops: list[int], pad: int, knobs: Knobs,
                 device, dtype):
        from transformers import StaticCache

        self.model, self.knobs, self.cache_len = model, knobs, cache_len
        self.forward = self._forward
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model passes it on
        # transformers >= 5.2x names the cache argument `cache` (`past_key_values` deprecated); older ones the latter
        self.cache_kw = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        self.token_b1 = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position_b1 = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot_1 = torch.zeros(1, dtype=torch.long, device=device)  # cache index the next token is written at
        self.column_1 = torch.zeros(1, dtype=torch.long, device=device)  # output column of the next drawn token
        self.open, self.blocked = True, False  # a boolean mask, True: attend (ATTENTION reads it like SDPA)
        self.mask_b11l = torch.zeros(batch, 1, 1, cache_len, dtype=torch.bool, device=device)
        self.done_b = torch.zeros(batch, dtype=torch.bool, device=device)
        self.tokens_bt = torch.zeros(batch, max_new, dtype=torch.long, device=device)
        self.logprobs_bt = torch.zeros(batch, max_new, dtype=torch.float32, device=device)
        self.stops = torch.tensor(stops or [-1], dtype=torch.long, device=device)
        self.pad, self.max_new = pad, max_new
        self.graph = None

    def _forward(self) -> torch.Tensor:
        """The model on the last drawn tokens: next-token logits, the token written into the cache at slot_1."""
        return self.model(input_ids=self.token_b1, position_ids=self.position_b1, attention_mask=self.mask_b11l,
                          cache_position=self.slot_1, use_cache=True, **{self.cache_kw: self.cache}).logits[:, -1]

    def body(self) -> None:
        """One decode step, entirely in device tensors."""
        token_b, logprob_b = draw(self.forward(), self.knobs)
        self.record(token_b, logprob_b)
        self.slot_1.add_(1)
        self.mask_b11l.index_fill_(3, self.slot_1, self.open)

    def record(self, token_b: torch.Tensor, logprob_b: torch.Tensor) -> None:
        """Write a drawn token (padding for rows already stopped) and move every counter on by one."""
        token_b = torch.where(self.done_b, torch.full_like(token_b, self.pad), token_b)
        self.tokens_bt.index_copy_(1, self.column_1, token_b[:, None])
        self.logprobs_bt.index_copy_(1, self.column_1, logprob_b[:, None])
        self.done_b |= torch.isin(token_b, self.stops)
        self.token_b1.copy_(token_b[:, None])
        self.position_b1.add_(1)
        self.column_1.add_(1)

    def capture(self) -> None:
        """Record body() as a CUDA graph (nothing runs: state is unchanged). Warm-up steps must have run already."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.body()
        self.graph = graph

    def run(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.body()


class GraphDecoder:
    """Samples completions of left-padded prompt batches from a causal LM; see the module doc.

    `decoder.generate(input_ids, attention_mask, max_new_tokens, knobs, stops, pad)` returns (tokens_bt,
    logprobs_bt, lengths_b): each row's drawn tokens up to and including its stop token (then `pad`), their
    log-probs, and how many were drawn. `graphs=False` never captures (the eager step, e.g. on CPU). `fuse`: run
    q/k/v and gate/up as one matmul each (fai_rl.fused_projections); None: where the model is on CUDA.
    """

    def __init__(self, model, graphs: bool | None = None, check_every: int = 8, compile: bool | None = None,
                 fuse: bool | None = None):
        self.model, self.check_every, self.fuse = model, check_every, fuse
        self.graphs = torch.cuda.is_available() if graphs is None else graphs
        self.compile = self.graphs if compile is None else compile
        self._step: _Step | None = None
        self._key = None
        self._fused = None  # fai_rl.fused_projections.DecodeWeights, made on the first call

    def fused_weights(self, merge_lora: bool | None = None):
        """The decoder's fai_rl.fused_projections.DecodeWeights (q/k/v and gate/up as one matmul each), made once; with
        CUDA only (it saves kernel launches, and costs a copy of those weights). `merge_lora`: see DecodeWeights."""
        if self._fused is None:
            from fai_rl.fused_projections import DecodeWeights

            import os

            on = self.fuse if self.fuse is not None else \
                next(self.model.parameters()).is_cuda and os.environ.get("FAI_RL_FUSED_PROJECTIONS", "1") != "0"
            self._fused = DecodeWeights.of(self.model) if on else DecodeWeights(None)
        if merge_lora is not None:
            self._fused.merge_lora = merge_lora
        return self._fused

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, knobs: Knobs,
                 stops: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, prompt_len = input_ids.shape
        device, dtype = input_ids.device, next(self.model.parameters()).dtype
        if not dtype.is_floating_point or dtype.itemsize == 1:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        cache_len = -(-(prompt_len + max_new_tokens + 1) // CACHE_ROUND) * CACHE_ROUND  # +1: the slot opened last
        graphs = self.graphs and device.type == "cuda"
        fused = self.fused_weights()
        key = (batch, cache_len, max_new_tokens, tuple(stops), pad, knobs, graphs)
        if self._key != key:
            self._step = None  # free the old shape's cache and graph first
            if graphs:
                torch.cuda.empty_cache()
            self._step, self._key = _Step(self.model, batch, cache_len, max_new_tokens, stops, pad, knobs,
                                          device, dtype), key
        step = self._step
        was_training = self.model.training
        self.model.eval()
        # a 16-bit model runs as it is: autocast would only add casts (and its cast cache is not graph-safe)
        autocast = torch.autocast(device.type, enabled=False) if dtype.itemsize == 2 else contextlib.nullcontext()
        config = self.model.config
        attention, config._attn_implementation = config._attn_implementation, register()
        try:
            with autocast, fused:  # q/k/v and gate/up as one matmul each: ~80 fewer kernels per token
                drawn = self._decode(step, input_ids, attention_mask, max_new_tokens, graphs)
        finally:
            config._attn_implementation = attention
            self.model.train(was_training)
        lengths_b = torch.where(step.done_b, (torch.isin(step.tokens_bt, step.stops).int().argmax(dim=1) + 1),
                                torch.full_like(step.done_b, drawn, dtype=torch.long))
        return step.tokens_bt[:, :drawn].clone(), step.logprobs_bt[:, :drawn].clone(), lengths_b

    def _decode(self, step: _Step, input_ids, attention_mask, max_new_tokens: int, graphs: bool) -> int:
        """Prefill, then decode steps until every row stopped or max_new_tokens; returns how many were drawn."""
        self._prefill(step, input_ids, attention_mask)
        drawn = 1
        if graphs and step.graph is None and max_new_tokens > 3:
            if self.compile:  # fuse the forward's small kernels (norms, rotary, activations) before capture
                step.forward = torch.compile(step._forward, dynamic=False)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(stream):  # capture wants warmed-up kernels: two real steps on a side stream
                    for _ in range(2):
                        step.body()
                        drawn += 1
            except Exception as e:  # noqa: BLE001 - a model torch.compile cannot handle: the plain forward
                if not self.compile:
                    raise
                torch.cuda.current_stream().wait_stream(stream)
                warnings.warn(f"fai-rl decoder: torch.compile failed on this model ({str(e).splitlines()[0][:200]});"
                              " capturing the uncompiled step", stacklevel=2)
                self.compile, step.forward = False, step._forward
                return drawn + self._continue(step, max_new_tokens - drawn)
            torch.cuda.current_stream().wait_stream(stream)
            try:
                step.capture()
            except RuntimeError as e:  # an op that cannot be captured: stay eager (same tokens), and say so once
                step.graph, self.graphs, self._key = None, False, None
                warnings.warn(f"fai-rl decoder: the decode step could not be captured as a CUDA graph "
                              f"({str(e).splitlines()[0][:200]}); decoding eagerly (same tokens, slower)",
                              stacklevel=2)
        return drawn + self._continue(step, max_new_tokens - drawn)

    def _continue(self, step: _Step, left: int) -> int:
        """Run up to `left` more steps, looking every check_every whether every row has stopped; returns how many."""
        drawn = 0
        while drawn < left and not bool(step.done_b.all()):
            for _ in range(min(self.check_every, left - drawn)):
                step.run()
                drawn += 1
        return drawn

    def _prefill(self, step: _Step, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the prompts into a fresh cache, draw the first token, and set every counter for the decode steps."""
        batch, prompt_len = input_ids.shape
        real_bp = attention_mask.bool()
        step.cache.reset()
        step.done_b.zero_()
        step.tokens_bt.fill_(step.pad)
        step.logprobs_bt.zero_()
        step.column_1.zero_()
        step.slot_1.fill_(prompt_len)
        position_bp = (real_bp.long().cumsum(dim=1) - 1).clamp(min=0)
        # prompt query q sees key k when k <= q and k is a real token (a padding query sees itself: no empty row)
        keys_l = torch.arange(step.cache_len, device=input_ids.device)
        queries_p = torch.arange(prompt_len, device=input_ids.device)
        real_bl = torch.nn.functional.pad(real_bp, (0, step.cache_len - prompt_len))
        seen_bpl = (keys_l[None, None, :] <= queries_p[None, :, None]) & real_bl[:, None, :]
        seen_bpl |= keys_l[None, None, :] == queries_p[None, :, None]
        mask_b1pl = seen_bpl[:, None]
        logits = self.model(input_ids=input_ids, position_ids=position_bp, attention_mask=mask_b1pl,
                            cache_position=queries_p, use_cache=True, logits_to_keep=1,
                            **{step.cache_kw: step.cache}).logits
        # the decode steps see the real prompt tokens, and each slot from prompt_len on as it is filled
        step.mask_b11l.fill_(step.blocked)
        step.mask_b11l.masked_fill_(real_bl[:, None, None, :], step.open)
        step.mask_b11l[:, :, :, prompt_len] = step.open
        step.position_b1.copy_(real_bp.long().sum(dim=1, keepdim=True) - 1)  # the last prompt token's position
        token_b, logprob_b = draw(logits[:, -1], step.knobs)
        step.record(token_b, logprob_b)  # the first drawn token, at position = the number of real prompt tokens


def decoder_for(model) -> GraphDecoder | None:
    """The model's own GraphDecoder (made once, so its graph is reused) where graphs can run: a CUDA model whose
    weights are not 4/8-bit quantised. None elsewhere (the caller uses HF generate).

    Uncompiled: eval, generate and workflow sampling call it for one batch or a few, where compiling (~30 s for a
    0.6B model) costs more than it saves; the captured graph alone is ~2.6x faster than HF generate (15 vs 40 ms per
    token at batch 64, H200). Training loops that sample every step (GRPO, PPO) build their own, compiled.
    """
    device = next(model.parameters()).device
    if device.type != "cuda" or getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None):
        return None
    decoder = model.__dict__.get("_fai_rl_decoder")
    if decoder is None:
        decoder = model.__dict__["_fai_rl_decoder"] = GraphDecoder(model, compile=False)
    return decoder


def install(model, decoder: GraphDecoder | None = None) -> GraphDecoder:
    """Make `model.generate(input_ids=, attention_mask=, generation_config=)` (how TRL's GRPOTrainer samples) run on
    a GraphDecoder, returning what HF generate returns: prompt + completion ids, padded after each stop token.

    Generation configs this decoder cannot honour (beam search, repetition penalty, min_p, ...) go to the model's
    own generate, unchanged.
    """
    decoder = decoder or GraphDecoder(model)
    hf_generate = model.generate

    def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        knobs = knobs_of(generation_config) if generation_config is not None else None
        if knobs is None or input_ids is None or set(kwargs) - {"disable_compile", "synced_gpus"}:
            return hf_generate(input_ids=input_ids, attention_mask=attention_mask,
                               generation_config=generation_config, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = generation_config.eos_token_id
        stops = [eos] if isinstance(eos, int) else list(eos or [])
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else (stops or [0])[0]
        tokens_bt, _, _ = decoder.generate(input_ids, attention_mask, generation_config.max_new_tokens, knobs,
                                           stops, pad)
        return torch.cat([input_ids, tokens_bt], dim=1)

    model.generate = generate
    return decoder


def knobs_of(config) -> Knobs | None:
    """The Knobs of a transformers GenerationConfig, or None where it asks for something else than plain sampling."""
    plain = (getattr(config, "num_beams", 1) or 1) == 1 and (config.repetition_penalty or 1.0) == 1.0 and \
        not getattr(config, "min_p", None) and (getattr(config, "num_return_sequences", 1) or 1) == 1 and \
        config.max_new_tokens is not None and not getattr(config, "min_new_tokens", None) and \
        not getattr(config, "bad_words_ids", None) and not getattr(config, "suppress_tokens", None)
    if not plain:
        return None
    if not config.do_sample:
        return Knobs(0.0)
    return Knobs(float(config.temperature or 1.0), float(config.top_p if config.top_p is not None else 1.0),
                 int(config.top_k or 0))
