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


# ---------------------------------------------------------------- fai-rl/digits, fai-rl/digits-pairs, fai-rl/countdown

DIGITS, PAIRS, COUNTDOWN = "fai-rl/digits", "fai-rl/digits-pairs", "fai-rl/countdown"


def _digits_problem(prompt: str) -> tuple[int, str, int]:
    a, op, b = prompt.removeprefix("What is ").removesuffix("?").split(" ")
    return int(a), op, int(b)


def test_digits_task_deterministic_disjoint_and_correct():
    assert is_builtin_task(DIGITS)
    train, test = load_builtin_task(DIGITS, "train"), load_builtin_task(DIGITS, "test")
    assert (len(train), len(test)) == (115, 40)
    assert train == load_builtin_task(DIGITS, "train") and test == load_builtin_task(DIGITS, "test")
    prompts = [r["prompt"] for r in train + test]
    assert len(set(prompts)) == 155  # every single-digit problem exactly once: 100 additions, 55 subtractions
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for row in train + test:
        assert set(row) == {"prompt", "answer"}
        a, op, b = _digits_problem(row["prompt"])
        assert 0 <= a <= 9 and 0 <= b <= 9 and op in "+-"
        assert row["answer"] == str(a + b if op == "+" else a - b) and 0 <= int(row["answer"]) <= 18
    assert {_digits_problem(r["prompt"])[1] for r in test} == {"+", "-"}


def test_digits_pairs_one_pair_per_near_miss_over_the_digits_problems():
    from fai_rl.data.tasks import near_misses

    sizes = {}
    for split in ("train", "test"):
        pairs, digits = load_builtin_task(PAIRS, split), load_builtin_task(DIGITS, split)
        assert pairs == load_builtin_task(PAIRS, split)
        expected = [(d["prompt"], d["answer"], str(w)) for d in digits for w in near_misses(int(d["answer"]))]
        assert [(p["prompt"], p["answer"], p["rejected"]) for p in pairs] == expected
        for p in pairs:
            assert set(p) == {"prompt", "chosen", "rejected", "answer"}
            assert all(isinstance(p[k], str) for k in p)
            assert p["chosen"] == p["answer"] != p["rejected"] and int(p["rejected"]) >= 0
        sizes[split] = len(pairs)
    assert sizes == {"train": 396, "test": 131}
    # Near misses keep the tens digit and move the units digit by 1 or 2.
    assert near_misses(0) == [1, 2] and near_misses(9) == [7, 8] and near_misses(13) == [11, 12, 14, 15]


def _countdown_values(numbers: list[int]) -> set:
    """Every value reachable with + - * / using each number at most once (exact fractions, no division by 0)."""
    from fractions import Fraction

    def combine(items):
        reach = {v for v in items}
        if len(items) < 2:
            return reach
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                x, y = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                for value in {x + y, x - y, x * y} | ({x / y} if y != 0 else set()):
                    reach |= combine([*rest, value])
        return reach

    from itertools import combinations

    values = set()
    for size in range(1, len(numbers) + 1):
        for subset in combinations([Fraction(n) for n in numbers], size):
            values |= combine(list(subset))
    return values


def _eval_expression(text: str) -> tuple[object, list[int]]:
    """Value of an arithmetic expression of integers, + - * / and parentheses (exact), and the integers it uses."""
    import ast
    import operator
    from fractions import Fraction

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
    used: list[int] = []

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return Fraction(node.value)
        raise AssertionError(f"unexpected syntax in {text!r}")

    return ev(ast.parse(text, mode="eval").body), used


def test_countdown_task_deterministic_disjoint_and_solvable():
    assert is_builtin_task(COUNTDOWN)
    train, test = load_builtin_task(COUNTDOWN, "train"), load_builtin_task(COUNTDOWN, "test")
    assert (len(train), len(test)) == (2000, 200)
    assert test == load_builtin_task(COUNTDOWN, "test") and train[:50] == load_builtin_task(COUNTDOWN, "train")[:50]
    keys = [(tuple(sorted(r["numbers"])), r["target"]) for r in train + test]
    assert len(set(keys)) == len(keys)  # no instance twice, so train and test are disjoint
    assert {len(r["numbers"]) for r in train} == {3, 4}
    for row in train + test:
        assert set(row) == {"prompt", "numbers", "target", "answer"}
        numbers, target = row["numbers"], row["target"]
        assert isinstance(target, int) and 1 <= target <= 100 and target not in numbers
        assert all(isinstance(n, int) and 1 <= n <= 25 for n in numbers)
        assert ", ".join(map(str, numbers)) in row["prompt"] and f"equals {target}." in row["prompt"]
        # The reference answer reaches the target and uses the given numbers (here: each exactly once).
        value, used = _eval_expression(row["answer"])
        assert value == target and sorted(used) == sorted(numbers), row
    # An independent brute-force solver agrees that the instances are solvable.
    for row in test[:60] + train[:40]:
        assert row["target"] in _countdown_values(row["numbers"]), row
    # The prompt asks for what the countdown reward checks by default (every number exactly once), and the reward
    # gives every reference answer full marks.
    from fai_rl.rewards.countdown import countdown

    assert all("each number exactly once" in row["prompt"] for row in test)
    scores = countdown([r["answer"] for r in test], numbers=[r["numbers"] for r in test],
                       target=[r["target"] for r in test])
    assert scores == [1.0] * len(test)


def test_new_task_errors_name_alternatives():
    for name in (DIGITS, PAIRS, COUNTDOWN):
        with pytest.raises(DataError, match="train, test"):
            load_builtin_task(name, "validation")
    with pytest.raises(DataError, match="fai-rl/countdown"):
        load_builtin_task("fai-rl/sudoku", "train")


# ---------------------------------------------------------------- fai-rl/tiny-sft


@pytest.fixture(scope="module")
def tiny_sft_dir(tiny_dir) -> Path:
    # Same FAI_RL_HOME as tiny_dir, so the base model is reused rather than rebuilt.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAI_RL_HOME", str(tiny_dir.parent.parent))
        return materialize_builtin_model("fai-rl/tiny-sft")


def test_tiny_sft_registered_and_cached(tiny_sft_dir, tiny_dir):
    import torch

    assert is_builtin_model("fai-rl/tiny-sft") and "digits" in BUILTIN_MODELS["fai-rl/tiny-sft"]
    assert tiny_sft_dir.name.startswith("tiny-sft-") and tiny_sft_dir.parent == tiny_dir.parent
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_sft_dir / name).is_file()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the base tokenizer, byte for byte
        assert (tiny_sft_dir / name).read_bytes() == (tiny_dir / name).read_bytes()
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    mtime = (tiny_sft_dir / "model.safetensors").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAI_RL_HOME", str(tiny_dir.parent.parent))
        assert materialize_builtin_model("fai-rl/tiny-sft") == tiny_sft_dir  # reused, not rebuilt
    assert (tiny_sft_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert not [p for p in tiny_sft_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_tiny_sft_answers_held_out_digits_in_format(tiny_sft_dir):
    import re

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_sft_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_sft_dir, padding_side="left")
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.eos_token_id == tokenizer.eos_token_id
    test = load_builtin_task(DIGITS, "test")
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True)
        for r in test
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=6)
    completions = out[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    # Right format on every held-out prompt: one number, then <|im_end|>.
    assert all(re.fullmatch(r"\d{1,2}", t) for t in texts), texts
    assert all(tokenizer.eos_token_id in row.tolist() for row in completions)
    # Mostly right greedily on problems it never saw (about 3/4 here; RL starts from this).
    correct = sum(t == r["answer"] for t, r in zip(texts, test))
    assert correct >= len(test) // 2, texts
