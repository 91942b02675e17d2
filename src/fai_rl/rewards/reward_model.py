"""The `reward_model` reward: a sequence-classification model (num_labels=1) scores prompt + completion.

The pair is rendered with the reward model's own chat template (user prompt, assistant completion), as TRL does for
model rewards, or concatenated when the tokenizer has none. Long inputs are cut from the left so the end of the
completion, where the score is read, is always seen. The model is loaded once per process (per model and device)
and runs under no_grad, on this process's GPU when there is one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from fai_rl.rewards.function import RewardError


def reward_model(
    prompts: list[str], completions: list[str], *, model: str, batch_size: int = 8, max_length: int = 2048,
    fresh_head: bool = False, **columns
) -> list[float]:
    """The reward model's score (its single logit) for each prompt + completion; unbounded, unlike the others.

    kwargs: model (str, required): a local dir or hub id of an AutoModelForSequenceClassification with num_labels=1;
    batch_size (int, default 8): pairs scored per forward pass; max_length (int, default 2048): tokens kept per pair.
    """
    import torch

    tokenizer, net = load_reward_model(model, score_device(), fresh_head)
    texts = [_render(tokenizer, p, c) for p, c in zip(prompts, completions)]
    templated = getattr(tokenizer, "chat_template", None) is not None
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                max_length=max_length, add_special_tokens=not templated,
            ).to(net.device)
            scores.extend(net(**batch).logits[:, 0].float().tolist())
    return scores


def _render(tokenizer, prompt: str, completion: str) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt + completion
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def score_device() -> str:
    """This process's GPU (LOCAL_RANK under a multi-process launch) when there is one, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', torch.cuda.current_device()))}"


@functools.lru_cache(maxsize=4)
def load_reward_model(model: str, device: str, fresh_head: bool = False):
    """(tokenizer, model in eval mode on `device`), loaded once per process; RewardError saying why it cannot be.

    `fresh_head` (FAI-RL's PPO, which scored with its value model): a checkpoint without a score head gets one
    initialised from a fixed seed, the same on every process, instead of being refused."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a fresh head (fresh_head) is the same on every process and every run
            net, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype, output_loading_info=True, **({"num_labels": 1} if fresh_head else {}))
    except (OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RewardError(_cannot_load(model, reason)) from None
    untrained = [k for k in info.get("missing_keys", ()) if k.split(".")[0] in ("score", "classifier")]
    if untrained and not fresh_head:
        raise RewardError(_cannot_load(
            model, f"its classification head ({', '.join(sorted(untrained))}) is not in the checkpoint, so it would "
            "score at random"
        ))
    if net.config.num_labels != 1:
        raise RewardError(_cannot_load(model, f"it has num_labels={net.config.num_labels}, not one score"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise RewardError(_cannot_load(model, "its tokenizer has neither a pad nor an EOS token to pad batches with"))
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    if net.config.pad_token_id is None:  # the head reads the last non-pad token, so it must know the pad id
        net.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, net.to(device).eval()


def _cannot_load(model: str, reason: str) -> str:
    return (
        f"cannot use '{model}' as a reward model ({reason}); give a local dir or hub id of a trained "
        "AutoModelForSequenceClassification with num_labels=1."
    )
