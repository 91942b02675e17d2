"""Two messages every run printed that concern no user of fai-rl, silenced by exact text (nothing else is).

- bitsandbytes' CPU backend logs `Failed to load CPU gemm_4bit_forward from kernels-community ...` at import on any
  AVX512-BF16 CPU without the optional `kernels` package; it then uses its own CPU kernel, and fai-rl never runs
  4-bit matmuls on CPU (QLoRA needs a GPU).
- transformers 5 warns (FutureWarning) that `is_gradient_checkpointing` is deprecated each time peft reads that
  property while wrapping a model; the call is peft's, not the user's, and there is nothing to change in a recipe.
"""

from __future__ import annotations

import logging
import warnings

_BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_TEXT = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def silence_known_noise() -> None:
    """Install both filters (idempotent); called by every fai-rl command before transformers or peft are imported."""
    logger = logging.getLogger(_BNB_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(_BNB_TEXT))
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
