"""The `http` reward: scores come from an HTTP endpoint (a sandbox, a judge model, a verifier service).

Protocol: POST `{"prompts": [...], "completions": [...], "columns": {name: [...]}}` as JSON; the endpoint answers
200 with `{"rewards": [one number or null per completion]}`. Connection errors, timeouts, 429 and 5xx are retried
with exponential backoff (bounded by `retries`); other 4xx and malformed bodies fail at once, since asking again
would not help. Header values never appear in messages (they often carry tokens), nor does the URL's query string.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from fai_rl.rewards.function import TRL_INTERNAL, RewardError

MAX_RETRIES = 10
_BACKOFF_START_S = 0.5  # first wait; doubles per retry
_BACKOFF_MAX_S = 8.0
_CONTRACT = 'the endpoint must answer 200 with JSON {"rewards": [one number or null per completion]}'


def http_reward(
    prompts: list[str],
    completions: list[str],
    *,
    url: str,
    timeout: float = 30.0,
    retries: int = 3,
    headers: dict[str, str] | None = None,
    **columns,
) -> list[float | None]:
    """Scores from POSTing the batch to `url` (see the module doc for the protocol).

    kwargs: url (str, required, http:// or https://); timeout (float > 0, default 30): seconds per attempt;
    retries (int in 0..10, default 3): further attempts after a failure that may pass, waiting 0.5 s, 1 s, 2 s, ...
    (at most 8 s); headers (mapping, optional): e.g. {Authorization: "Bearer ${oc.env:REWARD_TOKEN}"}.
    """
    data = {k: v for k, v in columns.items() if k not in TRL_INTERNAL}
    body = json.dumps({"prompts": prompts, "completions": completions, "columns": data}, default=str).encode()
    request_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    shown = _safe_url(url)
    failure = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(_BACKOFF_MAX_S, _BACKOFF_START_S * 2 ** (attempt - 1)))
        request = urllib.request.Request(url, data=body, headers=request_headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            failure = f"HTTP {e.code} {e.reason}"
            if e.code == 429 or e.code >= 500:
                continue
            raise RewardError(f"POST {shown} answered {failure} {_snippet(e.read())}; {_CONTRACT}.") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            failure = f"{type(reason).__name__}: {reason}" if isinstance(reason, Exception) else str(reason)
            if isinstance(reason, TimeoutError) or "timed out" in failure:
                failure = f"no answer within timeout={timeout:g} s"
            continue
        return _parse(raw, len(completions), shown)
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    raise RewardError(
        f"POST {shown} failed after {tries} ({failure}); check that the endpoint is up and reachable from here, "
        f"or raise kwargs.timeout / kwargs.retries; {_CONTRACT}."
    )


def _parse(raw: bytes, n: int, shown: str) -> list[float | None]:
    try:
        answer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RewardError(f"POST {shown} answered a body that is not JSON {_snippet(raw)}; {_CONTRACT}.") from None
    rewards = answer.get("rewards") if isinstance(answer, dict) else None
    if not isinstance(rewards, list):
        raise RewardError(f"POST {shown} answered {_snippet(raw)} without a \"rewards\" list; {_CONTRACT}.")
    if len(rewards) != n:
        raise RewardError(f"POST {shown} answered {len(rewards)} rewards for {n} completions; {_CONTRACT}.")
    return rewards  # numbers and None are checked by RewardFn, like any reward's output


def _safe_url(url: str) -> str:
    """The URL without credentials or query string (either may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def _snippet(raw: bytes, width: int = 120) -> str:
    text = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else str(raw)
    text = " ".join(text.split())
    return f"({text[:width]}{'...' if len(text) > width else ''})" if text else "(empty body)"
