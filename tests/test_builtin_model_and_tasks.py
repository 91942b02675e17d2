"""The built-in `fai-rl/tiny` model and the built-in synthetic tasks: loadable, small, deterministic, well-formed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fai_rl.data.tasks import BUILTIN_TASKS, is_builtin_task, load_builtin_task
from fai_rl.errors import DataError, RecipeError
from fai_rl.models.builtin import BUILTIN_MODELS, is_builtin_model, materialize_builtin_model

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "src" / "fai_rl" / "models" / "tiny"
ARITH = "fai-rl/arithmetic"


def _materialize(home: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAI_RL_HOME", str(home))
        return materialize_builtin_model("fai-rl/tiny")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _materialize(tmp_path_factory.mktemp("fai_rl_home"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


# ---------------------------------------------------------------- model


def test_registry():
    assert "fai-rl/tiny" in BUILTIN_MODELS and is_builtin_model("fai-rl/tiny")
    assert not is_builtin_model("Qwen/Qwen3-0.6B")
    with pytest.raises(RecipeError, match="fai-rl/tiny"):
        materialize_builtin_model("fai-rl/huge")


def test_module_imports_are_cheap():
    code = (
        "import sys, fai_rl.models.builtin, fai_rl.data.tasks; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def test_shipped_files_are_small_and_regenerable(tmp_path):
    total = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert total < 100_000
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_model_files.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_materialized_dir_loads(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    assert tiny_dir.name.startswith("tiny-")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tiny_dir / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) <= 1_000_000
    cfg = model.config
    assert cfg.tie_word_embeddings and cfg.vocab_size >= len(tokenizer) and cfg.vocab_size % 8 == 0
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_weights_deterministic_and_cached(tmp_path, tiny_dir):
    import torch

    rng_before = torch.get_rng_state()
    other = _materialize(tmp_path / "home2")
    assert torch.equal(torch.get_rng_state(), rng_before)  # materializing leaves the caller's RNG alone
    assert other.name == tiny_dir.name  # same content version
    assert (other / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    mtime = (other / "model.safetensors").stat().st_mtime_ns
    assert _materialize(tmp_path / "home2") == other  # reused, not rebuilt
    assert (other / "model.safetensors").stat().st_mtime_ns == mtime
    # No temp dirs left behind.
    assert [p.name for p in (tmp_path / "home2" / "models").iterdir()] == [other.name]


# ---------------------------------------------------------------- tokenizer / chat template


def test_tokenizer_round_trips(tokenizer):
    for text in ["What is 23 + 58?", "  leading spaces, tabs\tand\nnewlines", "unicode: héllo → 世界 🙂", "12-7=5"]:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer("42")["input_ids"] == [ord("4"), ord("2")]  # char-level digits, no merges
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tokenizer.eos_token_id


def test_chat_template(tokenizer):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "tool", "content": "ok"},
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>tool\nok<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    # Prefix-preserving: the prompt plus the answer is exactly the full conversation.
    assert tokenizer.apply_chat_template(msgs[:3], tokenize=False) == prompt + "4<|im_end|>\n"


def test_assistant_mask_covers_answer_and_im_end(tokenizer):
    msgs = [
        {"role": "user", "content": "What is 23 + 58?"},
        {"role": "assistant", "content": "81"},
        {"role": "user", "content": "And 1 - 1?"},
        {"role": "assistant", "content": "0"},
    ]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [tok for tok, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "81<|im_end|>0<|im_end|>"


def test_trl_accepts_template_for_assistant_only_loss(tokenizer):
    trl_templates = pytest.importorskip("trl.chat_template_utils")
    # TRL keeps a template with generation markers as-is and warns unless the end-of-turn token is trained.
    assert trl_templates.has_generation_markers(tokenizer.chat_template)
    assert trl_templates.is_chat_template_stop_token_trained(tokenizer)


# ---------------------------------------------------------------- tasks


def test_arithmetic_task_deterministic_and_disjoint():
    assert ARITH in BUILTIN_TASKS and is_builtin_task(ARITH) and not is_builtin_task("gsm8k")
    train, test = load_builtin_task(ARITH, "train"), load_builtin_task(ARITH, "test")
    assert (len(train), len(test)) == (2000, 200)
    assert train == load_builtin_task(ARITH, "train") and test == load_builtin_task(ARITH, "test")
    prompts = [r["prompt"] for r in train]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {r["prompt"] for r in test}
    for row in train + test:
        assert set(row) == {"prompt", "answer"}
        a, op, b = row["prompt"].removeprefix("What is ").removesuffix("?").split(" ")
        a, b = int(a), int(b)
        assert 0 <= a <= 49 and 0 <= b <= 49 and op in "+-"
        assert row["answer"] == str(a + b if op == "+" else a - b) and int(row["answer"]) >= 0
    assert {r["prompt"].split()[3] for r in test} == {"+", "-"}


def test_task_errors_name_alternatives():
    with pytest.raises(DataError, match="train, test"):
        load_builtin_task(ARITH, "validation")
    with pytest.raises(DataError, match="fai-rl/arithmetic"):
        load_builtin_task("fai-rl/geometry", "train")
