"""One sampling interface over a local model and Tinker sampler weights.

    sampler = open_sampler(resolve_model_source("runs/grpo"))
    sampler.generate(prompts_token_ids, n=4, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0)
        -> one list of n Completion(tokens, text, logprobs, stopped) per prompt
    sampler.score_continuations(prompt_ids, [choice_ids, ...]) -> summed log-prob of each continuation

Prompts are token ids (render them with `render_chat`), so both backends see exactly the same tokens. Generation stops
at the tokenizer's EOS or `<|im_end|>`; the stop token is kept in `tokens`, left out of `text`. Temperature 0 is
greedy. The engines are fai_rl.sampling's (the ones training rollouts use): batched with left padding, `batch_size`
sequences (prompts x n) per call, top_k off, so temperature and top_p alone shape the distribution, as in training;
`logprobs` are under the distribution sampled from locally, and as the service reports them on Tinker.
"""

from __future__ import annotations

import os
from typing import Protocol

from fai_rl.errors import BackendError, UsageError
from fai_rl.models.source import ModelSource
from fai_rl.sampling import Completion, generate_local, render_chat, sample_tinker, stop_token_ids

__all__ = ["Completion", "Sampler", "open_sampler", "render_chat"]


class Sampler(Protocol):
    """What fai-rl-eval and fai-rl-generate need from a model, wherever it runs."""

    tokenizer: object

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, seed: int = 0) -> list[list[Completion]]:
        """n completions of each prompt (token ids), in prompt order."""

    def score_continuations(self, prompt: list[int], continuations: list[list[int]]) -> list[float]:
        """Summed log-probability of each continuation after the prompt."""


def open_sampler(source: ModelSource, device: str | None = None, dtype: str = "auto", batch_size: int = 64,
                 tinker_base_url: str | None = None, request_timeout_s: float = 600.0) -> Sampler:
    """A LocalSampler, or a TinkerSampler for tinker:// sources."""
    if source.kind == "tinker":
        return TinkerSampler(source, base_url=tinker_base_url, timeout=request_timeout_s)
    return LocalSampler(source, device=device, dtype=dtype, batch_size=batch_size)


class LocalSampler:
    """A model loaded here (full model, adapter merged into its base, or base weights)."""

    def __init__(self, source: ModelSource, device: str | None = None, dtype: str = "auto", batch_size: int = 64):
        from transformers.utils import logging as hf_logging

        from fai_rl.models.source import load_for_inference

        hf_logging.disable_progress_bar()  # a per-file "Loading weights" bar says nothing a user needs
        self.source = source
        self.model, self.tokenizer = load_for_inference(source, device=device, dtype=dtype, merge=True)
        self.device = self.model.device
        self.batch_size = max(1, batch_size)
        self.stops = stop_token_ids(self.tokenizer, self.model)

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=256, seed=0):
        import torch

        torch.manual_seed(seed)  # one seed per call: the same recipe samples the same completions
        return generate_local(self.model, self.tokenizer, prompts, n, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, stops=self.stops, batch_size=self.batch_size)

    def score_continuations(self, prompt, continuations):
        import torch

        sequences = [list(prompt) + list(c) for c in continuations]
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=self.device)
        with torch.no_grad():
            logprobs = self.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        out = []
        for row, c in enumerate(continuations):
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(c))  # logits at t predict token t + 1
            out.append(float(sum(logprobs[row, p, tok] for p, tok in zip(positions, c, strict=True))))
        return out


class TinkerSampler:
    """Sampler weights on the Tinker service (tinker://...); the tokenizer is the base model's, loaded here.

    The API key comes from TINKER_API_KEY; the service from `base_url`, else TINKER_BASE_URL, else the SDK default.
    All sampling requests are sent before the first is awaited; each wait is bounded by `timeout` seconds.
    """

    def __init__(self, source: ModelSource, base_url: str | None = None, timeout: float = 600.0):
        from transformers import AutoTokenizer

        from fai_rl.models.load import resolve_model_path

        if not os.environ.get("TINKER_API_KEY"):
            raise BackendError(f"{source.spec} lives on Tinker, and TINKER_API_KEY is not set; export your Tinker "
                               "API key (it is read from the environment only).")
        try:
            import tinker
        except ImportError:
            raise BackendError("sampling tinker:// weights needs the tinker SDK; pip install tinker.") from None
        self.tinker, self.source, self.timeout = tinker, source, timeout
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(source.base))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load the tokenizer of base model '{source.base}' for {source.spec} "
                             f"({str(e).splitlines()[0]}); name the base model the weights were trained "
                             "from.") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stops = stop_token_ids(self.tokenizer)
        url = base_url or os.environ.get("TINKER_BASE_URL") or None
        self.service = tinker.ServiceClient(base_url=url)
        self.client = self._wait(self.service.create_sampling_client(model_path=source.path),
                                 f"opening a sampling client on {source.path}")

    def _wait(self, future, what: str):
        try:
            return future.result(timeout=self.timeout) if hasattr(future, "result") else future
        except Exception as e:  # noqa: BLE001 - every SDK failure is reported the same way
            reason = f"no answer within {self.timeout:g} s" if isinstance(e, TimeoutError) else \
                f"{type(e).__name__}: {str(e)[:300]}"
            raise BackendError(f"Tinker: {what} failed ({reason}).") from None

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=256, seed=0):
        params = self.tinker.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            seed=seed, stop=self.stops)
        return sample_tinker(self.client, self.tinker, self.tokenizer, prompts, n, params, self._wait,
                             f"sampling from {self.source.path}")

    def score_continuations(self, prompt, continuations):
        futures = [self.client.compute_logprobs(self.tinker.ModelInput.from_ints(list(prompt) + list(c)))
                   for c in continuations]
        out = []
        for c, future in zip(continuations, futures, strict=True):
            logprobs = self._wait(future, f"scoring choices on {self.source.path}")
            out.append(float(sum(logprobs[len(prompt):len(prompt) + len(c)])))
        return out
