"""Samplers for workflows: the local policy (transformers generate) and a Tinker SamplingClient.

Thin holders of the sampling settings around fai_rl.sampling's two engines (the ones eval and generate use): per
completion, the sampled tokens (ending with the end-of-turn token when the model stopped) and each token's log-prob
under softmax(logits / temperature), the "old" policy of the importance ratio in the update.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from fai_rl.sampling import Completion, generate_local, sample_tinker, stop_token_ids


class LocalSampler:
    """Sampling from a local causal LM with HF generate, `batch_size` sequences per generate call."""

    def __init__(self, model, tokenizer, *, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 512):
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.temperature, self.top_p, self.batch_size = max_tokens, temperature, top_p, batch_size
        self.stop = stop_token_ids(tokenizer, model)

    def sample(self, prompts: list[list[int]], n: int, max_tokens: int | None = None,
               temperature: float | None = None) -> list[list[Completion]]:
        return generate_local(self.model, self.tokenizer, prompts, n, max_new_tokens=max_tokens or self.max_tokens,
                              temperature=temperature or self.temperature, top_p=self.top_p, stops=self.stop,
                              batch_size=self.batch_size)


class TinkerSampler:
    """Sampling through a Tinker SamplingClient: every request is sent before any is awaited.

    `wait(future, what)` is the session's bounded wait (fai_rl.backends.tinker.common.TinkerSession.wait).
    """

    def __init__(self, client, tokenizer, tinker, wait: Callable[[Any, str], Any], *, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0):
        self.client, self.tokenizer, self.tinker, self.wait = client, tokenizer, tinker, wait
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.stop = stop_token_ids(tokenizer)
        self.key, self.calls = None, 0

    def reseed(self, key: str) -> None:
        """Seed the draws from here on from `key` (e.g. the recipe's seed and the step) and the count of calls since:
        the same key and calls draw the same samples, so a resumed run samples what the uninterrupted one did."""
        self.key, self.calls = key, 0

    def sample(self, prompts: list[list[int]], n: int, max_tokens: int | None = None,
               temperature: float | None = None) -> list[list[Completion]]:
        params = self.tinker.SamplingParams(max_tokens=max_tokens or self.max_tokens,
                                            temperature=temperature or self.temperature, top_p=self.top_p,
                                            stop=self.stop)
        seed = None if self.key is None else zlib.crc32(f"{self.key}:{self.calls}".encode()) & 0x3FFFFFFF
        self.calls += 1
        return sample_tinker(self.client, self.tinker, self.tokenizer, prompts, n, params, self.wait,
                             "workflow sampling", seed)
