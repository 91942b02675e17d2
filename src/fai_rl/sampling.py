"""Sampling completions from a policy, the same way everywhere: training rollouts, workflows, eval and generate.

Two engines, one result type:
- generate_local: a transformers model here (left-padded batches, `n` samples per prompt): on a CUDA GPU through
  fai-rl's graph decoder (fai_rl.decode), elsewhere or for a quantised model HF generate;
- sample_tinker: a Tinker SamplingClient (every request in flight before the first is awaited).

Each Completion carries the sampled tokens (ending with the stop token when the model stopped) and each token's
log-prob under the distribution it was drawn from, softmax(logits / temperature) (plain softmax when greedy): the
"old" policy of an importance ratio. Locally top_k is off and top_p is the caller's, so the log-probs are exact when
top_p is 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Completion:
    """One sampled reply: token ids (with the stop token when it stopped), text, per-token log-probs."""

    tokens: list[int]
    text: str  # decoded without special tokens
    logprobs: list[float] | None
    stopped: bool  # ended with a stop token (else it was cut at the token limit)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Ids that end a turn: the model's generation_config EOS ids, the tokenizer's EOS and `<|im_end|>`."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    found = {*ids, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return sorted(i for i in found if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


def render_chat(tokenizer, messages: list[dict], max_length: int | None = None, chat_template: bool = True) -> list[int]:
    """Token ids of a conversation through the chat template with the assistant turn opened, left-truncated to
    max_length; without a template (or chat_template=False), the message contents joined by newlines."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
    else:
        ids = tokenizer("\n".join(str(m["content"]) for m in messages), add_special_tokens=True)["input_ids"]
    return ids[-max_length:] if max_length else ids


def completion_from_tokens(tokenizer, tokens: list[int], logprobs, stops: list[int]) -> Completion:
    """A Completion of sampled `tokens` (cut after the first stop token)."""
    end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
    kept = list(tokens[:end] if end else tokens)
    text = tokenizer.decode(kept[:-1] if end else kept, skip_special_tokens=True)
    return Completion(kept, text, list(logprobs[: len(kept)]) if logprobs is not None else None, end is not None)


def generate_local(model, tokenizer, prompts: list[list[int]], n: int, *, max_new_tokens: int, temperature: float,
                   top_p: float = 1.0, stops: list[int] | None = None, batch_size: int = 512) -> list[list[Completion]]:
    """n completions of each prompt (token ids), in prompt order; temperature 0 is greedy (n identical copies).

    At most `batch_size` sequences go through one generate call. The model is put in eval mode for the call and
    returned to the mode it was in.
    """
    import torch
    from transformers import GenerationConfig

    from fai_rl.decode import Knobs, decoder_for

    stops = stops if stops is not None else stop_token_ids(tokenizer, model)
    sampling = temperature > 0
    # every sampling knob given, so a model's own generation_config (e.g. top_k 20) cannot change what is sampled
    knobs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sampling else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                              output_logits=True, return_dict_in_generate=True, **knobs)
    device = next(model.parameters()).device
    flat = [p for p in prompts for _ in range(n)]
    out: list[Completion] = []
    decoder = decoder_for(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(flat), max(1, batch_size)):
            chunk = flat[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": chunk}, padding_side="left", return_tensors="pt").to(device)
            if decoder is not None:
                knobs = Knobs(temperature, top_p) if sampling else Knobs(0.0)
                tokens_bt, logprobs_bt, _ = decoder.generate(batch["input_ids"], batch["attention_mask"],
                                                             max_new_tokens, knobs, stops, tokenizer.pad_token_id)
                out += [completion_from_tokens(tokenizer, ids, lps, stops)
                        for ids, lps in zip(tokens_bt.tolist(), logprobs_bt.tolist(), strict=True)]
                continue
            with torch.no_grad():
                result = model.generate(**batch, generation_config=config)
            new_bt = result.sequences[:, batch["input_ids"].shape[1] :]
            logits_btv = torch.stack(result.logits, dim=1).float() / (temperature if sampling else 1.0)
            logprobs_bt = torch.log_softmax(logits_btv, dim=-1).gather(-1, new_bt.unsqueeze(-1)).squeeze(-1)
            out += [completion_from_tokens(tokenizer, ids, lps, stops)
                    for ids, lps in zip(new_bt.tolist(), logprobs_bt.tolist(), strict=True)]
    finally:
        model.train(was_training)
    return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def sample_tinker(client, tinker, tokenizer, prompts: list[list[int]], n: int, params,
                  wait: Callable[[Any, str], Any], what: str = "sampling",
                  seed: int | None = None) -> list[list[Completion]]:
    """n completions of each prompt from a Tinker SamplingClient, in prompt order.

    One request per distinct prompt (prompts repeat when several episodes share a task): the service answers a
    request in about the same time whatever num_samples is, so fewer, larger requests are faster. `wait(future,
    what)` is the caller's bounded wait; `params` a tinker.SamplingParams whose `stop` are the stop token ids.
    `seed` makes the draw reproducible: request i gets seed + the number of samples asked before it (the service
    seeds sample j of a request with its seed + j), so no two samples share a seed.
    """
    counts: dict[tuple[int, ...], int] = {}
    for ids in prompts:
        counts[tuple(ids)] = counts.get(tuple(ids), 0) + n
    offsets = dict(zip(counts, itertools.accumulate(counts.values(), initial=0)))
    futures = {key: client.sample(prompt=tinker.ModelInput.from_ints(list(key)), num_samples=count,
                                  sampling_params=params if seed is None else
                                  params.model_copy(update={"seed": (seed + offsets[key]) % 2**31}))
               for key, count in counts.items()}
    stops = list(params.stop or [])
    pools = {key: [completion_from_tokens(tokenizer, list(seq.tokens), seq.logprobs, stops)
                   for seq in wait(future, what).sequences][::-1]
             for key, future in futures.items()}
    return [[pools[tuple(ids)].pop() for _ in range(n)] for ids in prompts]
