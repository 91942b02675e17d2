"""Load the tokenizer and model a recipe names, with the dtype, quantisation and LoRA settings it asks for.

`model:` keys map onto transformers / bitsandbytes / peft arguments here and nowhere else.
"""

from __future__ import annotations

import functools
import os

from fai_rl.algorithms import spec_of
from fai_rl.config.schema import ModelConfig, Recipe
from fai_rl.errors import BackendError, RecipeError
from fai_rl.models.builtin import is_builtin_model, materialize_builtin_model
from fai_rl.models.init_from import start_weights


def resolve_model_path(name: str, model: ModelConfig | None = None) -> str:
    """A path or hub id that from_pretrained accepts (built-in models are written to the cache on first use; an
    s3:// model dir is downloaded into it, with `model`'s s3_region / s3_endpoint_url, else boto3's defaults)."""
    if name.startswith("s3://"):
        from fai_rl.s3 import download_dir

        region, endpoint = (model.s3_region, model.s3_endpoint_url) if model is not None else (None, None)
        return str(download_dir(name, region, endpoint, key="model.base_model_name"))
    return str(materialize_builtin_model(name)) if is_builtin_model(name) else name


def accelerator() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(recipe: Recipe) -> bool:
    """training.bf16, with null resolved to: on for a bf16-capable GPU, off on CPU (and off under training.fp16).

    `true` where no GPU can run bf16 mixed precision (a laptop trying a FAI-RL recipe, whose template writes
    `bf16: true`) trains in float32 instead, said once by check_precision: the same recipe runs in bf16 on a GPU."""
    if recipe.training.bf16 is False or (recipe.training.bf16 is None and recipe.training.fp16):
        return False  # rules refuse both true; a null bf16 gives way to the fp16 the recipe asked for
    return bf16_gpu()


def bf16_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def use_liger_kernel(recipe: Recipe) -> bool:
    """training.use_liger_kernel, with null resolved to: on for SFT/DPO with a CUDA GPU and liger-kernel installed.

    GRPO/GSPO stay off by default: their time is generation, and TRL's liger GRPO loss is a separate code path.
    """
    if recipe.training.use_liger_kernel is not None:
        return recipe.training.use_liger_kernel
    import importlib.util

    import torch

    return (spec_of(recipe.training.algorithm).liger_by_default and torch.cuda.is_available()
            and importlib.util.find_spec("liger_kernel") is not None)


def use_padding_free(recipe: Recipe) -> bool:
    """training.padding_free, with null resolved to: on for SFT and DPO (the registry's padding_free_by_default) where
    a varlen attention kernel exists (DPO: fai_rl.backends.local.dpo_packed).

    A padding-free batch is its rows laid end to end in one sequence whose position ids restart at each row (TRL's
    padding-free collator); transformers keeps attention inside each row (its packed-sequence mask for sdpa, eager
    and flex attention, the varlen kernel for flash-attention 2), so every row's loss and gradients are those of the
    padded batch (tests/test_padding_free.py) while no compute goes to padding. TRL's packing is padding-free too.
    On a CPU (or without a varlen kernel) the null default stays off: there attention over a padding-free batch is
    SDPA with one block-diagonal mask over the whole row, (sum of rows)^2 work, slower than padding (measured 4.4x on
    the tiny model, ragged chat data). true still trains exactly there.
    """
    t = recipe.training
    if t.padding_free is not None:
        return t.padding_free
    from fai_rl.models import varlen

    kernel = varlen.available() or attn_implementation(recipe.model) == "flash_attention_2"
    return spec_of(t.algorithm).padding_free_by_default and kernel


def use_gradient_checkpointing(recipe: Recipe) -> bool:
    """training.gradient_checkpointing, with null resolved to: on when the run would not fit the GPU without it.

    Recomputing activations costs ~1/3 more compute (SFT full fine-tune of Qwen3-0.6B at seq 2048 on an H100: 56k
    tokens/s with it, 84k without, at 25 GiB instead of 7), so it is only worth it where memory forces it. The
    estimate (estimated_gpu_bytes) is deliberately generous; off on CPU, where it only costs time.
    """
    if recipe.training.gradient_checkpointing is not None:
        return recipe.training.gradient_checkpointing
    import torch

    if not torch.cuda.is_available():
        return False
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return estimated_gpu_bytes(recipe) > 0.8 * total


def estimated_gpu_bytes(recipe: Recipe) -> float:
    """Peak GPU bytes of one process training this recipe without activation checkpointing (a generous estimate).

    Weights (+ gradients and AdamW state for a full fine-tune) plus activations of one micro-batch at
    2 bytes x layers x (8 h + 4 intermediate + 2 d_attn + 2 d_kv) per token (calibrated on Qwen3-0.6B with Liger: 8%
    above the measured peak at seq 2,048 and 17% above at 65,536; x1.15 for LoRA's extra saved tensors), plus fp32
    logits for the RL losses.
    """
    parts = estimate_parts(recipe)
    return parts["state"] + parts["activations"] + parts["logits"]


def estimate_parts(recipe: Recipe) -> dict:
    """estimated_gpu_bytes in its parts (bytes): state, activations (all layers), logits; and layers, tokens, hidden
    (fai_rl.models.checkpointing plans per-layer checkpointing from them)."""
    from transformers import AutoConfig

    m, t, d = recipe.model, recipe.training, recipe.data
    c = AutoConfig.from_pretrained(resolve_model_path(m.base_model_name, m), trust_remote_code=m.trust_remote_code)
    c = getattr(c, "text_config", c)
    h, inter, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
    d_attn, d_kv = c.num_attention_heads * head_dim, getattr(c, "num_key_value_heads", c.num_attention_heads) * head_dim
    params = layers * (2 * h * d_attn + 2 * h * d_kv + 3 * h * inter) + vocab * h * (1 if c.tie_word_embeddings else 2)
    weight_bytes = 0.55 if m.load_in_4bit else 1.0 if m.load_in_8bit else 2.0 if torch_dtype(m).itemsize == 2 else 4.0
    state = params * (weight_bytes if m.use_lora else 4 * weight_bytes)  # full: weights, grads, two AdamW moments
    algorithm = spec_of(t.algorithm)
    if algorithm.samples:  # prompt + sampled completion
        tokens = t.per_device_train_batch_size * (d.max_length + t.max_completion_length)
    else:
        tokens = t.per_device_train_batch_size * d.max_length * algorithm.sequences_per_row
    activations = tokens * layers * 2 * (8 * h + 4 * inter + 2 * d_attn + 2 * d_kv) * (1.15 if m.use_lora else 1.0)
    logits = tokens * vocab * 4 if algorithm.samples else 0
    return {"state": state, "activations": activations, "logits": logits, "layers": layers, "tokens": tokens,
            "hidden": h}


def use_fast_generation(recipe: Recipe) -> bool:
    """training.fast_generation, with null resolved to: on with a CUDA GPU (the graph decoder), off on CPU."""
    if recipe.training.fast_generation is not None:
        return recipe.training.fast_generation
    import torch

    return torch.cuda.is_available()


def torch_dtype(model: ModelConfig):
    import torch

    if model.torch_dtype == "auto":
        return torch.bfloat16 if accelerator() == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, model.torch_dtype)


def load_tokenizer(model: ModelConfig):
    """The recipe's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model.base_model_name, model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise RecipeError(
            f"model.base_model_name: cannot load a tokenizer for '{model.base_model_name}' "
            f"({str(e).splitlines()[0]}); give a local model dir, a hub id you can reach, or fai-rl/tiny."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.is_fast:
        raise RecipeError(
            f"model.base_model_name: '{model.base_model_name}' has only a slow (Python) tokenizer; fai-rl needs a "
            "fast tokenizer to place the loss mask. Convert it (tokenizers) or pick a model that ships tokenizer.json."
        )
    return tokenizer


def quantization_config(model: ModelConfig):
    """A BitsAndBytesConfig for load_in_4bit / load_in_8bit, or None."""
    if not (model.load_in_4bit or model.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        key = "model.load_in_4bit" if model.load_in_4bit else "model.load_in_8bit"
        raise BackendError(f"{key}: needs bitsandbytes; install it with pip install 'fai-rl[quant]'.") from None
    import torch
    from transformers import BitsAndBytesConfig

    if model.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    weights = torch_dtype(model)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, model.bnb_4bit_compute_dtype) if model.bnb_4bit_compute_dtype else weights,
        bnb_4bit_quant_storage=weights,  # same storage dtype as the other weights, so FSDP/ZeRO can shard it
    )


def lora_config(model: ModelConfig):
    """The peft LoraConfig of the recipe, or None without LoRA."""
    if not model.use_lora:
        return None
    from peft import LoraConfig

    targets = model.lora_target_modules
    return LoraConfig(
        r=model.lora_r,
        lora_alpha=model.lora_alpha,
        lora_dropout=model.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        # a string is peft's regex over the full module path, a list exact names / name suffixes (FAI-RL's meaning)
        exclude_modules=(model.lora_exclude_modules if isinstance(model.lora_exclude_modules, str | None)
                         else list(model.lora_exclude_modules)),
        bias=model.lora_bias,
        task_type="CAUSAL_LM",
    )


def attn_implementation(model: ModelConfig) -> str | None:
    """model.attn_implementation, or for FAI-RL's use_flash_attention: flash_attention_2 where the flash-attn package
    is installed and the GPU has compute capability >= 8.0, else sdpa with a note (once a process). None: transformers
    picks (sdpa where the model supports it)."""
    if model.attn_implementation is not None or not model.use_flash_attention:
        return model.attn_implementation  # rules refuse both set
    import importlib.util

    import torch

    if importlib.util.find_spec("flash_attn") is None:
        why = "not installed here (no flash_attn package)"
    elif not torch.cuda.is_available():
        why = "not supported here (no CUDA GPU)"
    elif torch.cuda.get_device_capability() < (8, 0):
        why = "not supported here (GPU compute capability {}.{} < 8.0)".format(*torch.cuda.get_device_capability())
    else:
        return "flash_attention_2"
    _note_once(f"model.use_flash_attention: flash-attention 2 is {why}; using SDPA")
    return "sdpa"


@functools.cache
def _note_once(line: str) -> None:
    """One `note:` line per process and text (a policy and its reference load the same way), on rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {line}", flush=True)


def load_causal_lm(model: ModelConfig, padding_free: bool = False):
    """The base causal LM (quantised when asked), not yet wrapped with LoRA: the one from_pretrained mapping; with
    model.init_from (local backend), the start it names instead of model.base_model_name's weights.

    padding_free: the batches will be padding-free; where the attention is SDPA and a varlen kernel exists
    (fai_rl.models.varlen), attention reads the rows' boundaries instead of a mask over the whole batch."""
    from transformers import AutoModelForCausalLM

    kwargs = {
        "dtype": torch_dtype(model),
        "trust_remote_code": model.trust_remote_code,
        "quantization_config": quantization_config(model),
        # transformers >= 5 always loads without a second copy and drops this argument; older ones read it
        "low_cpu_mem_usage": model.low_cpu_mem_usage,
        "ignore_mismatched_sizes": model.ignore_mismatched_sizes,
    }
    attention = attn_implementation(model)
    if padding_free and attention in (None, "sdpa"):
        from fai_rl.models import varlen

        attention = varlen.register()  # varlen_attn on a GPU, one SDPA call per row elsewhere
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if model.init_from is None:
        path = resolve_model_path(model.base_model_name, model)
    else:  # SFT -> RL: weights only (fai_rl.models.init_from); the policy and a full fine-tune's reference alike
        path = start_weights(model, lambda m: resolve_model_path(m.base_model_name, m))
        _note_once(f"model.init_from: weights from {model.init_from} ({path}), a fresh optimizer at step 0 (with "
                   "--resume, this run's checkpoint then replaces both)")
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        key, value = ("model.init_from", model.init_from) if model.init_from else ("model.base_model_name",
                                                                                  model.base_model_name)
        raise RecipeError(
            f"{key}: cannot load '{value}' ({str(e).splitlines()[0]}); "
            "give a local model dir, a hub id you can reach, or fai-rl/tiny."
        ) from None
