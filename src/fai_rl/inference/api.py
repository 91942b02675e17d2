"""Chat replies from a hosted model through the providers' maintained SDKs, not hand-built HTTP.

The provider is chosen from the endpoint's host as FAI-RL chooses it (utils/api_utils._get_model_provider): a host
with 'gemini' / generativelanguage.googleapis.com is Gemini, 'anthropic' is Anthropic, everything else is
OpenAI-compatible (api.openai.com, vLLM, TGI, fai-rl-serve) and goes through the `openai` SDK. Each SDK already does
bounded retries with exponential backoff on rate limits (429), 5xx and dropped connections (`max_retries`), so that is
what we use; a row still failing after them is reported and the others are kept. Keys come from the environment only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from fai_rl.errors import BackendError

KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "google": "GEMINI_API_KEY"}
EXTRAS = {"anthropic": ("anthropic", "anthropic"), "google": ("google.genai", "gemini")}  # module, fai-rl extra


def provider_of(endpoint: str) -> str:
    """google | anthropic | openai, from the endpoint's host (FAI-RL's rule; its 'default' is OpenAI-compatible)."""
    host = (urlparse(endpoint).hostname or endpoint).lower()
    if "generativelanguage.googleapis.com" in host or "gemini" in host:
        return "google"
    if "anthropic" in host:
        return "anthropic"
    return "openai"


def openai_base_url(endpoint: str) -> str:
    """The SDK's base_url of an endpoint given as FAI-RL gives it (often the full .../v1/chat/completions URL)."""
    return re.sub(r"/(chat/)?completions/?$", "", endpoint.rstrip("/"))


def api_key_for(provider: str, endpoint: str) -> str:
    """FAI_RL_API_KEY, else the provider's variable; a loopback or private OpenAI-compatible server needs none."""
    key = os.environ.get("FAI_RL_API_KEY") or os.environ.get(KEY_VARIABLES[provider])
    if key:
        return key
    host = urlparse(endpoint).hostname or ""
    if provider == "openai" and host not in ("api.openai.com",) and not host.endswith(".openai.com"):
        return "EMPTY"  # self-hosted vLLM/TGI/fai-rl-serve: any key is accepted
    raise BackendError(f"no API key for {endpoint}: export FAI_RL_API_KEY or {KEY_VARIABLES[provider]} (keys are "
                       "read from the environment only, never from the recipe).")


def open_chat_client(endpoint: str, model: str, *, max_retries: int, timeout_s: float) -> Callable[..., str]:
    """A function (messages, temperature, top_p, max_tokens) -> reply text for this endpoint's provider."""
    provider = provider_of(endpoint)
    key = api_key_for(provider, endpoint)
    if provider != "openai":
        module, extra = EXTRAS[provider]
        try:
            __import__(module)
        except ImportError:
            raise BackendError(f"{endpoint} is a {provider} endpoint, and its SDK ({module}) is not installed; "
                               f"pip install 'fai-rl[{extra}]'.") from None
    if provider == "anthropic":
        import anthropic

        client = anthropic.Anthropic(api_key=key, max_retries=max_retries, timeout=timeout_s)

        def ask(messages, temperature, top_p, max_tokens):
            system = "\n".join(m["content"] for m in messages if m["role"] == "system") or anthropic.NOT_GIVEN
            turns = [m for m in messages if m["role"] != "system"]
            reply = client.messages.create(model=model, system=system, messages=turns, max_tokens=max_tokens,
                                           temperature=temperature, top_p=top_p)
            return "".join(getattr(block, "text", "") for block in reply.content)

        return ask
    if provider == "google":
        from google import genai
        from google.genai import types

        client = genai.Client(api_key=key, http_options=types.HttpOptions(
            timeout=int(timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=max_retries + 1)))

        def ask(messages, temperature, top_p, max_tokens):
            system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
            turns = [m["content"] for m in messages if m["role"] != "system"]
            reply = client.models.generate_content(model=model, contents=turns, config=types.GenerateContentConfig(
                system_instruction=system, temperature=temperature, top_p=top_p, max_output_tokens=max_tokens))
            return reply.text or ""

        return ask
    import openai

    client = openai.OpenAI(base_url=openai_base_url(endpoint), api_key=key, max_retries=max_retries,
                           timeout=timeout_s)

    def ask(messages, temperature, top_p, max_tokens):
        reply = client.chat.completions.create(model=model, messages=messages, temperature=temperature,
                                               top_p=top_p, max_tokens=max_tokens)
        return reply.choices[0].message.content or ""

    return ask


def ask_all(ask: Callable[..., str], conversations: list[list[dict]], *, concurrency: int, temperature: float,
            top_p: float, max_tokens: int) -> tuple[list[str | None], dict[int, str]]:
    """Every conversation's reply (None where it failed after the SDK's retries) and {row: why} for the failures."""
    def one(messages):
        try:
            return ask(messages, temperature, top_p, max_tokens), None
        except Exception as e:  # noqa: BLE001 - any SDK error fails this row only; the reason is reported
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(one, conversations))
    return [r for r, _ in results], {i: why for i, (_, why) in enumerate(results) if why is not None}
