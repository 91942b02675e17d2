"""Regenerate the shipped files of the built-in `fai-rl/tiny` model (src/fai_rl/models/tiny/).

The output is committed; this script exists so it can be rebuilt and reviewed. It is deterministic: running it twice
gives byte-identical files. Weights are NOT written here: `fai_rl.models.builtin.materialize_builtin_model` creates
them from a fixed seed on first use, so the package stays small.

    python scripts/make_tiny_model_files.py [--out DIR]

Changing any of these files changes the content version in the materialized model's cache directory name, so stale
weights are never reused with a new config or tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "fai_rl" / "models" / "tiny"

# Special tokens follow Qwen's names, so recipes written for Qwen models read naturally on the tiny model.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]  # ids 256, 257, 258: right after the 256 byte symbols

MAX_LEN = 1024

# Qwen/ChatML layout. The assistant body and its <|im_end|> sit inside {% generation %} so transformers'
# `return_assistant_tokens_mask` (and TRL's assistant_only_loss) train the model to stop; the trailing "\n" is outside
# because the model never generates it (generation ends at <|im_end|>). Content may be a string or a list of
# {"type": "text", "text": ...} parts; assistant tool calls render as Qwen's <tool_call> JSON blocks.
CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is iterable and content is not mapping -%}"
    "{%- for part in content -%}{%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message.role not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('fai-rl/tiny chat template: unsupported role ' + message.role"
    " + ' (expected system, user, assistant or tool)') -}}"
    "{%- endif -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}"
    "{{- render_content(message.content) -}}"
    "{%- if message.tool_calls -%}"
    "{%- for tool_call in message.tool_calls -%}"
    "{%- if tool_call.function is defined -%}{%- set tool_call = tool_call.function -%}{%- endif -%}"
    "{%- if not loop.first or message.content -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' -}}"
    "{{- (tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson) -}}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + render_content(message.content) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-unicode map, the alphabet of the ByteLevel pre-tokenizer."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE with the 256 byte symbols as the whole base vocab (id == byte value) and no merges."""
    # No merges on purpose: every digit and operator is its own token, which is what char-level arithmetic needs.
    vocab = {sym: b for b, sym in sorted(bytes_to_unicode().items())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets exact, which return_assistant_tokens_mask relies on (char -> token lookups).
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [256, 257, 258]
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    """tokenizer_config.json: special tokens, chat template and the generic fast-tokenizer class."""
    return {
        # The generic class loads tokenizer.json as-is; model-specific classes (Qwen2Tokenizer) would rebuild the
        # pipeline with their own pre-tokenizer regex.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_LEN,
        "padding_side": "right",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def model_config(tok: Tokenizer) -> dict:
    """config.json: a ~0.8M-parameter Qwen3 (4 layers, hidden 128, GQA 4/2 heads of 32)."""
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = (n_tokens + 7) // 8 * 8  # a multiple of 8 that covers every token
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_LEN,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-06,
        "use_cache": True,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 4,
        "layer_types": ["full_attention"] * 4,
        "bos_token_id": None,  # like the tokenizer: no BOS token is ever prepended
        "eos_token_id": tok.token_to_id(IM_END),
        "pad_token_id": tok.token_to_id(PAD_TOKEN),
        "dtype": "float32",
    }


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    """Write config.json, tokenizer.json and tokenizer_config.json into --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out: Path = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    files = {
        "config.json": _dump(model_config(tok)),
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": _dump(tokenizer_config(tok)),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {out / name} ({len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
