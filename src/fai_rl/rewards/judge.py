"""The `llm_judge` reward: a model behind an OpenAI-compatible endpoint grades each completion.

Any server that speaks `/v1/chat/completions` works: `fai-rl-serve` (a model trained here), vLLM, TGI, or a hosted
API. The grading prompt is `template` filled with the row's `{prompt}`, `{completion}` and any dataset column (e.g.
`{answer}`); the first number in the judge's reply, clamped to [0, max_score] and divided by max_score, is the reward
(None, i.e. no reward for that completion, when the reply holds no number). Requests go out concurrently, so a
batching server (fai-rl-serve, vLLM) answers them in one pass; greedy (temperature 0) so a grade is repeatable.

The client is the `openai` SDK (its retries with backoff on connection errors, 429 and 5xx: `retries`). The API key
is read from the environment variable `api_key_env` (never from the recipe); a local server needs none.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from fai_rl.rewards.function import TRL_INTERNAL, RewardError

DEFAULT_TEMPLATE = (
    "Grade the response to the question from 0 (wrong or useless) to 10 (correct and complete). Answer with the "
    "number only.\n\nQuestion:\n{prompt}\n\nResponse:\n{completion}\n\nGrade:"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def llm_judge(
    prompts: list[str],
    completions: list[str],
    *,
    base_url: str,
    model: str,
    template: str = DEFAULT_TEMPLATE,
    max_score: float = 10.0,
    max_tokens: int = 8,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    retries: int = 3,
    concurrency: int = 16,
    **columns,
) -> list[float | None]:
    """Each completion's grade from the judge model, in [0, 1] (see the module doc).

    kwargs: base_url (str, required): the endpoint's /v1 URL, e.g. http://127.0.0.1:8000/v1; model (str, required):
    the judge's model name there; template (str): the grading prompt with {prompt}, {completion} and column names;
    max_score (float > 0, default 10); max_tokens (int > 0, default 8); api_key_env (str, default OPENAI_API_KEY);
    timeout (float > 0, seconds per request); retries (int 0..10); concurrency (int > 0): requests in flight.
    """
    import openai

    data = {k: v for k, v in columns.items() if k not in TRL_INTERNAL}
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", timeout=timeout,
                           max_retries=retries)

    def grade(i: int) -> float | None:
        fields = {name: values[i] for name, values in data.items() if isinstance(values, list) and len(values) > i}
        try:
            text = template.format(prompt=prompts[i], completion=completions[i], **fields)
        except (KeyError, IndexError) as e:
            raise RewardError(f"kwargs.template names {e}, which is not prompt, completion or a dataset column "
                              f"({', '.join(sorted(fields)) or 'none'}).") from None
        try:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                   max_tokens=max_tokens, temperature=0)
        except openai.OpenAIError as e:
            raise RewardError(f"judge {model} at {base_url} failed after {retries + 1} attempts "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check that the endpoint is up "
                              "and the model name is right, or raise kwargs.timeout / kwargs.retries.") from None
        return score_reply(reply.choices[0].message.content or "", max_score)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(completions)))) as pool:
        return list(pool.map(grade, range(len(completions))))


def score_reply(reply: str, max_score: float) -> float | None:
    """The first number in a judge's reply as a reward in [0, 1]; None when there is none."""
    found = _NUMBER.search(reply)
    if found is None:
        return None
    return min(max(float(found.group()), 0.0), max_score) / max_score
