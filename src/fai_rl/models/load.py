"""Load the tokenizer and model a recipe names, with the dtype, quantisation and LoRA settings it asks for.

`model:` keys map onto transformers / bitsandbytes / peft arguments here and nowhere else.
"""

from __future__ import annotations

from fai_rl.config.schema import ModelConfig, Recipe
from fai_rl.errors import BackendError, RecipeError
from fai_rl.models.builtin import is_builtin_model, materialize_builtin_model


def resolve_model_path(name: str) -> str:
    """A path or hub id that from_pretrained accepts (built-in models are written to the cache on first use)."""
    return str(materialize_builtin_model(name)) if is_builtin_model(name) else name


def accelerator() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(recipe: Recipe) -> bool:
    """training.bf16, with null resolved to: on for a bf16-capable GPU, off on CPU."""
    if recipe.training.bf16 is not None:
        return recipe.training.bf16
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def torch_dtype(model: ModelConfig):
    import torch

    if model.torch_dtype == "auto":
        return torch.bfloat16 if accelerator() == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, model.torch_dtype)


def load_tokenizer(model: ModelConfig):
    """The recipe's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model.base_model_name)
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
    from transformers import BitsAndBytesConfig

    if model.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(model)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,  # same storage dtype as the other weights, so FSDP/ZeRO can shard it
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
        task_type="CAUSAL_LM",
    )


def load_causal_lm(model: ModelConfig):
    """The base causal LM (quantised when asked), not yet wrapped with LoRA."""
    from transformers import AutoModelForCausalLM

    kwargs = {
        "dtype": torch_dtype(model),
        "trust_remote_code": model.trust_remote_code,
        "quantization_config": quantization_config(model),
    }
    if model.attn_implementation is not None:
        kwargs["attn_implementation"] = model.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model_path(model.base_model_name), **kwargs)
    except (OSError, ValueError) as e:
        raise RecipeError(
            f"model.base_model_name: cannot load '{model.base_model_name}' ({str(e).splitlines()[0]}); "
            "give a local model dir, a hub id you can reach, or fai-rl/tiny."
        ) from None
