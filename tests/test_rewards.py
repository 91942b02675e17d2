"""Rewards: each built-in on hand-made cases, the loader and its recipe errors, the TRL calling convention, the
checks on what a reward returns, the weighted total, the --dry-run preview, a real tiny reward model and a real HTTP
endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fai_rl.config import load_recipe
from fai_rl.data.tasks import load_builtin_task
from fai_rl.errors import FaiRLError, RecipeError
from fai_rl.rewards import (
    BUILTINS,
    RewardError,
    RewardFn,
    build_rewards,
    check_rewards,
    evaluate_equation,
    extract_final_number,
    preview_rewards,
    score_rewards,
)
from fai_rl.rewards import remote

RECIPE = """\
model:
  base_model_name: fai-rl/tiny
data:
  datasets:
    - name: fai-rl/arithmetic
training:
  algorithm: grpo
  output_dir: runs/x
rewards:
"""


def reward_recipe(write_recipe, *rewards: dict):
    """A GRPO recipe file whose `rewards:` list is `rewards`, one key per line (so errors carry line numbers)."""
    lines = [RECIPE]
    for r in rewards:
        lines.append(f"  - function: {json.dumps(r['function'])}\n")
        for key in ("weight", "kwargs"):
            if key in r:
                lines.append(f"    {key}: {json.dumps(r[key])}\n")
    return write_recipe("".join(lines))


def problems(path) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, extra_rules=[check_rewards])
    return info.value.problems


def builtin(name: str, **kwargs) -> RewardFn:
    return RewardFn(BUILTINS[name], name=name, kwargs=kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Built-ins


def test_exact_match_normalises_case_space_and_final_period():
    fn = builtin("exact_match")
    got = fn(prompts=["q"] * 5, completions=["  Paris.", "paris", "PARIS  city", "Lyon", "42"],
             answer=["paris", "Paris", "paris city", "Paris", 42])
    assert got == [1.0, 1.0, 1.0, 0.0, 1.0]  # numbers in the answer column compare as text
    other = builtin("exact_match", column="label")
    assert other(prompts=["q"], completions=["yes"], label=["Yes"], answer=["no"]) == [1.0]


@pytest.mark.parametrize(("text", "expected"), [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", 72.0),          # GSM8K reference
    ("first 5, then \\boxed{17}", 17.0),                         # boxed beats the last number
    ("\\boxed{\\frac{3}{4}} and later 9", 0.75),                 # LaTeX fraction, nested braces
    ("<answer> 12 </answer> then I said 99", 12.0),              # answer tag beats the last number
    ("\\boxed{7}\n#### 8", 8.0),                                 # #### beats everything
    ("so it costs $1,234,567.50 in total", 1234567.5),           # thousands separators and decimals
    ("The temperature fell to -12 degrees.", -12.0),             # negative, trailing period not part of it
    ("pages 5-3 of the book", 3.0),                              # a hyphen between numbers is not a sign
    ("half of it: 3/4", 0.75),                                   # simple fraction
    ("x = -7/2", -3.5),
    ("no number here", None),
    ("1/0", None),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_math_answer_compares_numbers_with_tolerance():
    fn = builtin("math_answer")
    completions = ["The answer is 72.", "#### 1,000", "\\boxed{71}", "I do not know", "3.3333"]
    answers = ["... so 72 clips.\n#### 72", "1000", "#### 72", "#### 5", "10/3"]
    assert fn(prompts=[""] * 5, completions=completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 0.0]
    loose = builtin("math_answer", tolerance=1e-3)  # |3.3333 - 10/3| = 3.3e-5
    assert loose(prompts=[""], completions=["3.3333"], answer=["10/3"]) == [1.0]


def test_format_regex_fullmatch_and_tags():
    text = ["<think>a\nb</think> <answer>4</answer>", "<answer>4</answer>", "4"]
    assert builtin("format", tags=["think", "answer"])(prompts=None, completions=text) == [1.0, 0.0, 0.0]
    assert builtin("format", tags=["<answer>"])(prompts=None, completions=text) == [1.0, 1.0, 0.0]
    assert builtin("format", regex=r"\d")(prompts=None, completions=text) == [1.0, 1.0, 1.0]
    whole = builtin("format", regex=r"<think>.*</think>\s*<answer>\d+</answer>", fullmatch=True)
    assert whole(prompts=None, completions=[*text, text[0] + " extra"]) == [1.0, 0.0, 0.0, 0.0]  # `.` spans lines


def test_length_is_zero_in_band_and_a_capped_penalty_outside():
    fn = builtin("length", min_chars=5, max_chars=10, penalty=0.1)
    got = fn(prompts=None, completions=["x" * 7, "x" * 2, "x" * 12, "x" * 30, "x" * 5, "x" * 10])
    # 3 short -> -0.3; 2 long -> -0.2; 20 long -> -2 capped at -1; both band edges are inside
    assert got == pytest.approx([0.0, -0.3, -0.2, -1.0, 0.0, 0.0])


def test_countdown_scores():
    fn = builtin("countdown")
    rows = {"numbers": [[3, 5, 2]] * 6, "target": [16] * 6}
    completions = [
        "<think>3+5 is 8, times 2</think><answer>(3 + 5) * 2</answer>",  # correct
        "I try...\n(3+5)*2 = 16",                                         # last line, trailing "= 16" dropped
        "<answer>3 + 5 + 2</answer>",                                     # well formed, 10 != 16
        "<answer>(5 + 5 + 3) + 3</answer>",                               # 16, but 5 and 3 used twice and 2 never
        "<answer>16</answer>",                                            # 16 without using the numbers
        "I give up",                                                      # no equation
    ]
    assert fn(prompts=None, completions=completions, **rows) == [1.0, 1.0, 0.1, 0.1, 0.1, 0.0]
    some = builtin("countdown", use_all=False, format_score=0.0)
    rows4 = {"numbers": [[3, 5, 2, 1]] * 2, "target": ["16", "16"]}  # CSV-style targets are fine
    assert some(prompts=None, completions=["<answer>(3+5)*2</answer>"] * 2, **rows4) == [1.0, 1.0]
    assert builtin("countdown")(prompts=None, completions=["<answer>(3+5)*2</answer>"], numbers=[[3, 5, 2, 1]],
                                target=[16]) == [0.1]  # use_all: the 1 is unused


def test_countdown_evaluates_exactly_and_never_runs_code(monkeypatch):
    assert evaluate_equation("7 / 3 * 3") == (Fraction(7), [7, 3, 3])
    assert evaluate_equation("-(2 - 10) * 2") == (Fraction(16), [2, 10, 2])
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd) or 0)
    fn = builtin("countdown")
    nasty = [
        "<answer>__import__('os').system('x')</answer>",
        "<answer>2**99999999</answer>",   # would take forever (and all memory) if evaluated
        "2**99999999",
        "<answer>(1).__class__</answer>",
        "<answer>1.5 * 2</answer>",       # floats are not allowed
        "<answer>16 / 0</answer>",
        "<answer>" + "9*" * 200 + "9</answer>",  # too long to be an answer
    ]
    start = time.perf_counter()
    got = fn(prompts=None, completions=nasty, numbers=[[2, 8]] * len(nasty), target=[16] * len(nasty))
    assert got == [0.0] * len(nasty) and calls == []
    assert time.perf_counter() - start < 1.0
    for expression in ("__import__('os')", "2**3", "a + 1", "1 if 1 else 2", "[1]"):
        with pytest.raises(ValueError):
            evaluate_equation(expression)


def test_missing_column_names_the_kwarg_to_set():
    with pytest.raises(RewardError, match=r"reward 'countdown'.*'numbers'.*columns: answer.*numbers_column"):
        builtin("countdown")(prompts=["p"], completions=["1+1"], answer=["2"])


# ----------------------------------------------------------------------------------------------------------------------
# Loader and recipe errors


def test_builtin_module_and_file_functions_load(write_recipe, tmp_path, monkeypatch):
    (tmp_path / "mod_rewards_ok.py").write_text(
        "def shout(completions, answer, bonus=0.0, **kw):\n"
        "    return [float(c.isupper()) + bonus for c in completions]\n"
    )
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "score.py").write_text(
        "def by_length(prompts, completions):\n    return [len(p) + len(c) for p, c in zip(prompts, completions)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = reward_recipe(
        write_recipe,
        {"function": "exact_match", "weight": 2.0},
        {"function": "mod_rewards_ok:shout", "kwargs": {"bonus": 0.5}},
        {"function": "more/score.py:by_length", "weight": 0.5},
        {"function": "exact_match", "kwargs": {"column": "answer"}},
    )
    recipe = load_recipe(path, extra_rules=[check_rewards])
    fns = build_rewards(recipe)
    assert [(f.name, f.weight) for f in fns] == [
        ("exact_match", 2.0), ("shout", 1.0), ("by_length", 0.5), ("exact_match_2", 1.0)
    ]
    assert [f.__name__ for f in fns] == [f.name for f in fns]  # what TRL logs under
    assert fns[1](prompts=["ab"], completions=["YES"], answer=["no"]) == [1.5]
    assert fns[2](prompts=["ab"], completions=["xyz"]) == [5.0]


def test_recipe_errors_name_the_key_the_value_and_the_fix(write_recipe, tmp_path, monkeypatch):
    (tmp_path / "mod_rewards_broken.py").write_text("import os\nraise RuntimeError('boom at import')\n")
    (tmp_path / "mod_rewards_bad.py").write_text(
        "def score(completions, **kw):\n    return [1.0] * len(completions)\n"
        "def no_completions(prompts, answer):\n    return [0.0]\n"
        "def strict(completions, scale=1.0):\n    return [scale] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = reward_recipe(
        write_recipe,
        {"function": "mod_rewards_broken:score"},                        # 0: module raises on import
        {"function": "mod_rewards_nowhere:score"},                       # 1: module does not exist
        {"function": "mod_rewards_bad:scor"},                            # 2: missing function
        {"function": "mod_rewards_bad:no_completions"},                  # 3: no `completions`
        {"function": "mod_rewards_bad:strict", "kwargs": {"scal": 2}},   # 4: kwarg it does not take
        {"function": "exact_mach"},                                      # 5: unknown built-in
        {"function": "math_answer", "kwargs": {"tolerence": 0.1}},       # 6: unknown built-in kwarg
        {"function": "math_answer", "kwargs": {"tolerance": "lots"}},    # 7: wrong type
        {"function": "format"},                                          # 8: nothing to check
        {"function": "nope.py:f"},                                       # 9: no such file
        {"function": "mod_rewards_bad:score", "kwargs": {"completions": 1}},  # 10: reserved name
    )
    got = problems(path)
    text = "\n".join(got)
    assert len(got) == 11, text
    line_of = {0: 10, 1: 11}  # `rewards:` is line 9 and these two take one line each
    assert got[0].startswith(f"{path}:{line_of[0]}: rewards[0].function: importing module 'mod_rewards_broken' "
                             "raised RuntimeError: boom at import")
    assert f"{path}:{line_of[1]}: rewards[1].function: no module named 'mod_rewards_nowhere'" in text
    assert "rewards[2].function: 'mod_rewards_bad' has no 'scor'; did you mean 'mod_rewards_bad:score'?" in text
    assert "rewards[3].function: 'mod_rewards_bad:no_completions' takes (prompts, answer) but no `completions`" in text
    assert "rewards[4].kwargs.scal: 'mod_rewards_bad:strict' does not take 'scal'; did you mean 'scale'?" in text
    assert "rewards[5].function: 'exact_mach' is not a built-in reward; did you mean 'exact_match'?" in text
    assert "rewards[6].kwargs.tolerence: unknown kwarg of built-in 'math_answer'; did you mean 'tolerance'?" in text
    assert "rewards[7].kwargs.tolerance: 'lots' is not valid for math_answer; expected a number." in text
    assert "rewards[8].kwargs: built-in 'format' needs kwargs.regex" in text
    assert "rewards[9].function: no such file 'nope.py'" in text
    assert "rewards[10].kwargs.completions: 'completions' is filled in by the trainer" in text


def test_builtin_kwargs_are_typed_and_range_checked(write_recipe, tmp_path):
    path = reward_recipe(
        write_recipe,
        {"function": "math_answer", "kwargs": {"tolerance": "1e-3"}},  # YAML 1.1 reads 1e-3 as a string: accepted
        {"function": "length", "kwargs": {"min_chars": 10, "max_chars": 5}},
        {"function": "format", "kwargs": {"regex": "(unclosed"}},
        {"function": "http", "kwargs": {"url": "localhost:8000", "retries": 99}},
        {"function": "reward_model", "kwargs": {"model": str(tmp_path / "no-such-model")}},
        {"function": "reward_model"},
        {"function": "countdown", "kwargs": {"use_all": "yes", "format_score": 2}},
    )
    text = "\n".join(problems(path))
    assert "rewards[0]" not in text
    assert "rewards[1].kwargs.max_chars: 5 is below min_chars (10)" in text
    assert "rewards[2].kwargs.regex: '(unclosed' is not a valid Python regex" in text
    assert "rewards[3].kwargs.url: 'localhost:8000' is not an http:// or https:// URL" in text
    assert "rewards[3].kwargs.retries: 99 must be in 0..10" in text
    assert "rewards[4].kwargs.model:" in text and "does not exist" in text
    assert "rewards[5].kwargs.model: built-in 'reward_model' needs kwargs.model" in text
    assert "rewards[6].kwargs.use_all: 'yes' is not valid for countdown; expected true or false." in text


def test_build_rewards_rejects_an_unchecked_recipe(write_recipe):
    recipe = load_recipe(reward_recipe(write_recipe, {"function": "exact_match"}))
    recipe.rewards[0].function = "exact_mach"
    with pytest.raises(RecipeError, match="did you mean 'exact_match'"):
        build_rewards(recipe)


# ----------------------------------------------------------------------------------------------------------------------
# The TRL calling convention and what a reward may return


def test_trl_conversational_inputs_and_extra_kwargs():
    seen = {}

    def picky(prompts, completions, answer, scale):
        seen.update(prompts=prompts, completions=completions, answer=answer, scale=scale)
        return [scale * float(c == a) for c, a in zip(completions, answer)]

    def greedy(completions, **kwargs):
        seen["greedy"] = sorted(kwargs)
        return [None] * len(completions)

    trl_call = {
        "prompts": [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
            [{"role": "user", "content": "What is 3 + 3?"}],
        ],
        "completions": [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "7"}]],
        "completion_ids": [[1, 2], [3]],
        "trainer_state": object(),
        "log_extra": lambda *a: None,
        "log_metric": lambda *a: None,
        "answer": ["4", "6"],
        "source": ["a", "b"],
    }
    fn = RewardFn(picky, kwargs={"scale": 2.0})
    assert fn(**trl_call) == [2.0, 0.0]
    assert seen["prompts"] == ["What is 2 + 2?", "What is 3 + 3?"] and seen["completions"] == ["4", "7"]
    assert fn.name == fn.__name__ == "picky"
    assert RewardFn(greedy)(**trl_call) == [None, None]  # None (not applicable) is kept for TRL
    assert seen["greedy"] == ["answer", "completion_ids", "log_extra", "log_metric", "prompts", "source",
                              "trainer_state"]
    with pytest.raises(RewardError, match=r"reward 'picky'.*needs 'answer'.*columns here: source"):
        fn(prompts=["p"], completions=["c"], source=["x"])


def _rows_3(value):
    return lambda completions, **kw: value


@pytest.mark.parametrize(("returned", "pattern"), [
    ([1.0, 2.0], r"reward 'bad' \(rewards\[1\]\) returned 2 scores for 3 completions"),
    ([1.0, float("nan"), 0.0], r"reward 'bad' \(rewards\[1\]\) returned nan for row 1"),
    ([1.0, 0.0, float("inf")], r"reward 'bad' \(rewards\[1\]\) returned inf for row 2"),
    ([1.0, "0.5", 0.0], r"reward 'bad' \(rewards\[1\]\) returned '0.5' \(str\) for row 1"),
    (0.5, r"reward 'bad' \(rewards\[1\]\) returned float 0.5; return a list"),
])
def test_wrong_results_name_function_and_row(returned, pattern):
    fn = RewardFn(_rows_3(returned), name="bad", where="rewards[1]")
    with pytest.raises(RewardError, match=pattern):
        fn(prompts=["a", "b", "c"], completions=["1", "2", "3"])


def test_a_raising_reward_names_the_first_failing_row_and_where_it_raised():
    def parse(completions, **kw):
        return [float(int(c)) for c in completions]  # raises on a non-number

    fn = RewardFn(parse, where="rewards[0]")
    with pytest.raises(RewardError) as info:
        fn(prompts=["a", "b", "c"], completions=["1", "two", "3"])
    message = str(info.value)
    assert isinstance(info.value, FaiRLError)
    assert message.startswith("reward 'parse' (rewards[0]) raised ValueError: invalid literal for int()")
    assert "on row 1 (completion 'two')" in message and f"{__file__}:" in message


# ----------------------------------------------------------------------------------------------------------------------
# Weighted total and the --dry-run preview


def test_score_rewards_weights_and_none():
    correct = RewardFn(BUILTINS["exact_match"], name="exact_match", weight=2.0)
    brief = RewardFn(lambda completions, **kw: [None if c == "?" else -0.5 for c in completions], name="brief",
                     weight=0.5)
    rows = [{"prompt": "p0", "answer": "4"}, {"prompt": "p1", "answer": "5"}, {"prompt": "p2", "answer": "?"}]
    totals, raw = score_rewards([correct, brief], ["p0", "p1", "p2"], ["4", "6", "?"], rows)
    # row 0: 2*1 + 0.5*-0.5; row 1: 2*0 + 0.5*-0.5; row 2: 2*1 + (None adds nothing)
    assert totals == pytest.approx([1.75, -0.25, 2.0])
    assert raw == {"exact_match": [1.0, 0.0, 1.0], "brief": [-0.5, -0.5, None]}


def test_preview_rewards_table():
    rows = load_builtin_task("fai-rl/arithmetic", "test")[:5]
    fns = [RewardFn(BUILTINS["exact_match"], name="exact_match"),
           RewardFn(BUILTINS["math_answer"], name="math_answer", weight=0.5)]
    text = preview_rewards(fns, rows, n=2)
    lines = text.splitlines()
    assert "first 2 rows" in lines[0]
    assert lines[1].split() == ["row", "prompt", "completion", "exact_match", "math_answer", "total"]
    for i in (0, 1):
        cells = lines[2 + i].split()
        assert cells[0] == str(i) and cells[-3:] == ["1.000", "1.000", "1.500"] and rows[i]["answer"] in cells
    assert lines[4] == "total = 1*exact_match + 0.5*math_answer; n/a = None (the reward does not apply)"
    broken = RewardFn(lambda completions, **kw: [1.0], name="broken")
    with pytest.raises(RewardError, match=r"(?s)row +prompt.*error.*reward 'broken' returned 1 scores for 2"):
        preview_rewards([fns[0], broken], rows, n=2)


# ----------------------------------------------------------------------------------------------------------------------
# reward_model: a tiny sequence-classification model built here


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> Iterator[Path]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only fight other processes for the 2 shared cores
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from fai_rl.models.builtin import materialize_builtin_model

    base = materialize_builtin_model("fai-rl/tiny")
    config = AutoConfig.from_pretrained(base)
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    config.num_labels = 1
    tokenizer = AutoTokenizer.from_pretrained(base)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path_factory.mktemp("rm") / "tiny-rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    yield out
    torch.set_num_threads(threads)


def test_reward_model_scores_are_finite_deterministic_and_batch_independent(write_recipe, tiny_reward_model):
    path = reward_recipe(
        write_recipe,
        {"function": "reward_model", "kwargs": {"model": str(tiny_reward_model), "batch_size": 2}},
        {"function": "reward_model", "kwargs": {"model": str(tiny_reward_model), "batch_size": 1}},
    )
    pairs, singles = build_rewards(load_recipe(path, extra_rules=[check_rewards]))
    assert (pairs.name, singles.name) == ("reward_model", "reward_model_2")
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], "What is 3 + 3?", "Hi"]
    completions = [[{"role": "assistant", "content": "4"}], "It is six, of course.", "Hello there, friend!"]
    first = pairs(prompts=prompts, completions=completions)
    assert len(first) == 3 and all(math.isfinite(s) for s in first)
    assert pairs(prompts=prompts, completions=completions) == first
    assert singles(prompts=prompts, completions=completions) == pytest.approx(first, abs=1e-4)  # padding ignored
    assert len(set(first)) == 3


def test_reward_model_that_is_not_one_fails_naming_the_kwarg(write_recipe):
    from fai_rl.models.builtin import materialize_builtin_model

    causal = materialize_builtin_model("fai-rl/tiny")  # a language model: no trained score head
    path = reward_recipe(write_recipe, {"function": "reward_model", "kwargs": {"model": str(causal)}})
    with pytest.raises(RecipeError, match=r"rewards\[0\]\.kwargs\.model: cannot use .* classification head"):
        build_rewards(load_recipe(path, extra_rules=[check_rewards]))


# ----------------------------------------------------------------------------------------------------------------------
# http: a real server on 127.0.0.1


class _Endpoint(BaseHTTPRequestHandler):
    """/ok scores len(completion); /flaky fails once with 500; /down always 500; /slow sleeps; /bad is not JSON."""

    def do_POST(self):  # noqa: N802 - http.server's name
        server, path = self.server, self.path.split("?")[0]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((path, dict(self.headers), body))
        hits = sum(1 for p, _, _ in server.requests if p == path)
        if path == "/slow":
            time.sleep(1.0)
        if path == "/down" or (path == "/flaky" and hits == 1):
            return self._send(500, b"internal error")
        if path == "/bad":
            return self._send(200, b"<html>surprise</html>")
        if path == "/short":
            return self._send(200, b'{"rewards": [1.0]}')
        self._send(200, json.dumps({"rewards": [float(len(c)) for c in body["completions"]]}).encode())

    def _send(self, status: int, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setattr(remote, "_BACKOFF_START_S", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.daemon_threads = True
    server.requests = []
    server.handle_error = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def http_fn(url: str, **kwargs) -> RewardFn:
    return RewardFn(BUILTINS["http"], name="http", where="rewards[0]", kwargs={"url": url, **kwargs},
                    locate_failing_row=False)


def test_http_success_sends_prompts_completions_and_data_columns(endpoint):
    server, base = endpoint
    fn = http_fn(f"{base}/ok", headers={"Authorization": "Bearer s3cret"})
    got = fn(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=["abc", "de"], answer=["3", "2"],
             trainer_state=object(), completion_ids=[[1], [2]])
    assert got == [3.0, 2.0]
    path, headers, body = server.requests[0]
    assert body == {"prompts": ["q", "q"], "completions": ["abc", "de"], "columns": {"answer": ["3", "2"]}}
    assert headers["Authorization"] == "Bearer s3cret"


def test_http_retries_a_server_error_then_succeeds(endpoint):
    server, base = endpoint
    assert http_fn(f"{base}/flaky", retries=3)(prompts=["p"], completions=["abcd"]) == [4.0]
    assert [p for p, _, _ in server.requests] == ["/flaky", "/flaky"]


def test_http_gives_up_after_bounded_retries_naming_the_url(endpoint):
    server, base = endpoint
    fn = http_fn(f"{base}/down?key=hidden", retries=2, headers={"X-Api-Key": "s3cret"})
    with pytest.raises(RewardError) as info:
        fn(prompts=["p"], completions=["c"])
    message = str(info.value)
    assert len(server.requests) == 3  # the first try + 2 retries
    assert f"POST {base}/down?... failed after 3 attempts (HTTP 500" in message
    assert '{"rewards": [one number or null per completion]}' in message
    assert "s3cret" not in message and "hidden" not in message


def test_http_timeout(endpoint):
    _, base = endpoint
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"POST .*/slow failed after 1 attempt \(no answer within timeout=0.2 s\)"):
        http_fn(f"{base}/slow", timeout=0.2, retries=0)(prompts=["p"], completions=["c"])
    assert time.perf_counter() - start < 0.9


@pytest.mark.parametrize(("path", "pattern"), [
    ("/bad", r"answered a body that is not JSON \(<html>surprise</html>\)"),
    ("/short", r"answered 1 rewards for 2 completions"),
])
def test_http_malformed_answers(endpoint, path, pattern):
    server, base = endpoint
    with pytest.raises(RewardError, match=r"reward 'http' \(rewards\[0\]\): POST .*" + pattern):
        http_fn(f"{base}{path}")(prompts=["p", "q"], completions=["c", "d"])
    assert len(server.requests) == 1  # asking again would not help


def test_rewards_package_does_not_import_torch():
    import subprocess

    code = "import sys, fai_rl.rewards; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
