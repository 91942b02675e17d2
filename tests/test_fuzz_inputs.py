"""Malformed inputs by the hundred, generated from the schema and per file format, through fai-rl-train --dry-run
in-process: every one must end in exit 2 with one `fai-rl-train:` message naming the key or file, no traceback, and
nothing written (no output_dir, no file beside the inputs).

Families: recipe bytes (binary, other encodings, broken YAML, wrong shapes per section), a wrong type and an
impossible number for every schema key (in the YAML and as a command-line override), hostile strings in the keys
that name paths, data files corrupt for their extension (jsonl, json, csv, parquet), reward plug-in paths that are
not Python modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import typing
from pathlib import Path

import yaml
from conftest import tiny_recipe

from fai_rl.cli.train import main
from fai_rl.config.ranges import RANGES
from fai_rl.config.schema import Recipe

MIN_CASES = 1000  # generated; each CI run takes every non-schema case and a seeded sample of the schema ones
SCHEMA_SAMPLE = 100  # FAI_RL_FUZZ_ALL=1 runs them all (~1400 cases, ~2.5 min); FAI_RL_FUZZ_SEED picks another sample


@dataclasses.dataclass
class Case:
    name: str
    recipe: bytes | dict
    overrides: list[str]
    names: tuple[str, ...]  # the message must name one of these (dotted key, leaf key or file)


def _leaves(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any, dataclasses.Field]]:
    """(dotted key, type hint, field) of every schema leaf; list-of-section keys as key[0].leaf."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, path = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, path + ".")
        elif typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            yield from _leaves(args[0], path + "[0].")
        else:
            yield path, hint, f


def _base(kind: str, out: Path) -> dict:
    recipe = tiny_recipe(out)
    if kind == "grpo":
        recipe["data"].pop("loss_on")
        recipe["training"].update({"algorithm": "grpo", "num_generations": 2, "per_device_train_batch_size": 4,
                                   "per_device_eval_batch_size": 4, "max_completion_length": 4})
        recipe["rewards"] = [{"function": "exact_match"}]
    return recipe


def _set(recipe: dict, dotted: str, value) -> dict:
    node, parts = recipe, dotted.replace("[0]", ".0").split(".")
    for part in parts[:-1]:
        if part == "0":
            node = node[0]
        else:
            default = [{"name": "fai-rl/arithmetic"}] if part == "datasets" else [{"function": "exact_match"}] \
                if part == "rewards" else [{"name": "x"}] if part.endswith("datasets") or part == "tasks" else {}
            node = node.setdefault(part, default)
    node[parts[-1]] = value
    return recipe


def _wrong_values(hint, f: dataclasses.Field) -> list:
    """Values of the wrong type for a key of type `hint` (and one outside its choices)."""
    base = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    kind = typing.get_origin(base[0]) or base[0]
    values = {int: ["ten", [1, 2], {"a": 1}, 1.5], float: ["fast", [0.5], {"x": 1}], bool: ["maybe", 7, [True]],
              str: [[1, 2], {"k": "v"}], list: [{"a": 1}, [[1], {"b": 2}]], dict: ["text", [1, 2]]}.get(kind, [{"a": [1]}])
    if f.metadata.get("choices"):
        values = [*values, "zz-not-a-choice"]
    return values


def _impossible(dotted: str, hint) -> list:
    """NaN for every float key; below its floor or above its ceiling for a key with a range (fai_rl.config.ranges)."""
    base = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    if base[0] not in (int, float):
        return []
    out = [float("nan")] if base[0] is float else []
    low, _, high, _ = RANGES.get(dotted.replace("[0]", "[]"), (None, 0, None, 0))
    if low is not None:
        out.append(low - (1 if base[0] is int else 1e30) if low else -(10**12))
    if high is not None and high != float("inf"):
        out.append(base[0](high * 2 + 1))
    return out


def generate(tmp: Path, out: Path, seed: int = 18) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    sft = yaml.safe_dump(_base("sft", out), sort_keys=False).encode()
    add = cases.append

    # ---- recipe files that are not (UTF-8 YAML) text, or not a recipe's shape
    for i in range(12):
        add(Case(f"binary{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(8, 400))) + b"\0", [],
                 ("recipe.yaml",)))
    add(Case("latin1", sft.replace(b"tiny", "tin\xff".encode("latin-1")), [], ("recipe.yaml",)))
    add(Case("utf16", sft.decode().encode("utf-16"), [], ("recipe.yaml",)))
    add(Case("utf32", sft.decode().encode("utf-32"), [], ("recipe.yaml",)))
    add(Case("nul-in-text", sft[:40] + b"\0" + sft[40:], [], ("recipe.yaml",)))
    for i in range(10):  # cut inside a quoted scalar or a flow collection: never valid YAML
        cut = rng.randrange(len(sft))
        add(Case(f"truncated{i}", sft[:cut] + rng.choice([b"\n]", b"\n}", b"\n: ]"]), [],
                 ("recipe.yaml",)))
    for text in ["- just\n- a list\n", "42\n", "'a string'\n", "training: 5\n", "training: [1, 2]\n", "data: text\n",
                 "model: [a]\n", "rewards: {function: exact_match}\n", "rewards: [5]\n", "data:\n  datasets: name\n",
                 "data:\n  datasets: [5]\n", "\tmodel: x\n", "a: *undefined\n", "model: {base_model_name: x\n",
                 "[" * 1500 + "]" * 1500 + "\n", "training:\n  seed: 1\n  seed: 2\n", "? [a, b]\n: c\n",
                 "model: !!python/object/apply:os.system ['true']\n", "%YAML 9.9\n---\nmodel: {}\n"]:
        add(Case(f"shape:{text[:24]!r}", text.encode(), [], ("recipe.yaml", "training", "model", "data", "rewards")))

    # ---- every schema key: wrong types (YAML and override), impossible numbers (SFT and GRPO recipes)
    for dotted, hint, f in _leaves(Recipe):
        leaf = dotted.split(".")[-1]
        for value in _wrong_values(hint, f):
            for kind in ("sft", "grpo"):
                add(Case(f"type:{kind}:{dotted}={value!r}", _set(_base(kind, out), dotted, value), [], (dotted, leaf)))
        if "[0]" not in dotted and _impossible(dotted, hint):  # numbers: a string would be a fine value for text keys
            add(Case(f"override:{dotted}", _base("sft", out), [f"{dotted}={{bad: [1}}"], (dotted, leaf)))
        for value in _impossible(dotted, hint):
            for kind in ("sft", "grpo"):
                add(Case(f"range:{kind}:{dotted}={value!r}", _set(_base(kind, out), dotted, value), [], (dotted, leaf)))
    for o in ["training.max_steps", "=5", "training=5", "..x=1", "training.nope.deeper=1", "training.max_steps=[1",
              "data.datasets[9].name=x", "data.datasets[-1].name=x", "model.base_model_name={a: 1}"]:
        add(Case(f"override:{o}", _base("sft", out), [o], ("command line", "training", "data", "model", o)))

    # ---- hostile strings in keys that name things to open
    marker = tmp / "pwned"
    hostile = ["\0", "a" * 5000, f"$(touch {marker})", f"`touch {marker}`", "../../../../../../etc/passwd",
               "\u202egnp.exe", "line\nbreak", "~nouser/x", "C:\\nope\\x", "http://127.0.0.1:9/model"]
    for dotted in ["model.base_model_name", "data.datasets[0].name", "rewards[0].function", "data.chat_template",
                   "training.output_dir"]:
        for value in hostile:
            if dotted == "training.output_dir" and value != "\0":
                continue  # any other text is a fine directory name
            kind = "grpo" if dotted.startswith("rewards") else "sft"
            add(Case(f"hostile:{dotted}={value[:20]!r}", _set(_base(kind, out), dotted, value), [],
                     (dotted, dotted.split(".")[-1])))
    (tmp / "a-file").write_text("x")
    add(Case("output_dir-under-a-file", _set(_base("sft", out), "training.output_dir", str(tmp / "a-file" / "run")),
             [], ("training.output_dir",)))

    # ---- data files corrupt for their extension
    good = b'{"prompt": "What is 1 + 1?", "answer": "2"}\n'
    bad_data = {
        "jsonl": [good + b'{"prompt": "tru', b"[1, 2]\n", b'"text"\n', b"\xff\xfe" + good.decode().encode("utf-16-le"),
                  b"\0" * 64, good.replace(b"What", b"Wh\xe9t"), b'{"prompt": 5, "answer": [1]}\n', b"",
                  b'{"prompt": "a"}\n', b'{"prompt": {"nested": 1}, "answer": "2"}\n', b"\n\n\n",
                  b'{"prompt": "a", "answer": "b"}' * 3 + b"\n"],
        "json": [b'[{"prompt": "a", "answer"', b"42", b'"a"', b"[1, 2, 3]", b"[]", b'{"prompt": "a"', b"[[]]",
                 b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b'[{"prompt": null, "answer": null}]'],
        "csv": [b'prompt,answer\n"a,b\n"c', b"prompt,answer\na,b,c,d\n", b"prompt,answer\nonly\n", b"",
                b"question,solution\nx,y\n", b"\0\1\2\3" * 40, "prompt,answer\nx,\xe9\n".encode("latin-1"),
                b"prompt,answer\n" + b'"' + b"x" * 200 + b"\n"],
        "parquet": [b"PAR1garbage", b"", b"PAR1" + bytes(range(256)) + b"PAR1", good, b"\0" * 1024],
    }
    parquet = tmp / "good.parquet"
    import datasets

    datasets.Dataset.from_list([{"prompt": "What is 1 + 1?", "answer": "2"}] * 8).to_parquet(str(parquet))
    whole = parquet.read_bytes()
    bad_data["parquet"] += [whole[: len(whole) // 2], whole[:-9], whole[:12] + b"\0" * 32 + whole[44:]]
    datasets.Dataset.from_list([{"prompt": {"a": 1}, "answer": [1, 2]}] * 4).to_parquet(str(tmp / "ints.parquet"))
    datasets.Dataset.from_list([{"zz_unknown": "x"}] * 4).to_parquet(str(tmp / "cols.parquet"))
    bad_data["parquet"] += [(tmp / "ints.parquet").read_bytes(), (tmp / "cols.parquet").read_bytes()]
    for ext, contents in bad_data.items():
        for i, content in enumerate(contents):
            path = tmp / f"data{i}.{ext}"
            path.write_bytes(content)
            recipe = _base("sft", out)
            recipe["data"]["datasets"] = [{"name": str(path)}]
            recipe["data"].pop("eval_datasets")
            add(Case(f"data:{path.name}", recipe, [], (path.name, "data.datasets[0]")))

    # ---- reward plug-in paths that are not Python modules
    plugins = {"syntax.py": b"def f(:\n  pass\n", "nul.py": b"\0\1\2", "utf16.py": "def f(**kw):\n  return [1]\n"
               .encode("utf-16"), "latin1.py": "# caf\xe9\ndef f(**kw): return []\n".encode("latin-1"),
               "raises.py": b"raise ValueError('at import')\n", "exits.py": b"import sys\nsys.exit(3)\n",
               "recurse.py": b"def g(): return g()\ng()\n", "noattr.py": b"x = 1\n", "notcallable.py": b"f = 5\n",
               "indent.py": b"def f():\nreturn 1\n", "png.py": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"}
    for name, content in plugins.items():
        (tmp / name).write_bytes(content)
        recipe = _base("grpo", out)
        recipe["rewards"] = [{"function": f"{tmp / name}:f"}]
        add(Case(f"plugin:{name}", recipe, [], ("rewards[0].function",)))
    (tmp / "adir.py").mkdir()
    for fn in [f"{tmp / 'adir.py'}:f", f"{tmp}/missing.py:f", f"{tmp / 'syntax.py'}:", ":f", "no_such_module_zz:f",
               "os:nope", "os.path:sep", f"{tmp / 'data0.jsonl'}:f"]:
        recipe = _base("grpo", out)
        recipe["rewards"] = [{"function": fn}]
        add(Case(f"plugin:{fn[-24:]}", recipe, [], ("rewards[0].function",)))
    return cases


def run_case(case: Case, tmp: Path) -> tuple[int | str, str]:
    path = tmp / "recipe.yaml"
    path.write_bytes(case.recipe if isinstance(case.recipe, bytes)
                     else yaml.safe_dump(case.recipe, sort_keys=False, allow_unicode=True).encode())
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["--recipe", str(path), "--dry-run", *case.overrides])
    except BaseException as e:  # noqa: BLE001 - what the fuzz is looking for
        rc = f"raised {type(e).__name__}: {str(e)[:300]}"
    return rc, out.getvalue() + err.getvalue()


def test_malformed_inputs_end_in_one_message_exit_2_and_nothing_written(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "run"
    cases = generate(inputs, out)
    assert len(cases) >= MIN_CASES, len(cases)
    if os.environ.get("FAI_RL_FUZZ_ALL") != "1":
        schema = [c for c in cases if c.name.startswith(("type:", "range:", "override:"))]
        rng = random.Random(int(os.environ.get("FAI_RL_FUZZ_SEED", "18")))
        keep = {id(c) for c in rng.sample(schema, min(SCHEMA_SAMPLE, len(schema)))}
        cases = [c for c in cases if c not in schema or id(c) in keep]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    failures = []
    for case in cases:
        rc, text = run_case(case, inputs)
        stderr_msg = [line for line in text.splitlines() if line.startswith("fai-rl-train: ")]
        problems = []
        if rc != 2:
            problems.append(f"exit {rc}")
        if "Traceback" in text:
            problems.append("a traceback")
        if len(stderr_msg) != 1:
            problems.append(f"{len(stderr_msg)} 'fai-rl-train:' lines")
        if not any(n in text for n in case.names):
            problems.append(f"no mention of {case.names}")
        if out.exists() or (inputs / "pwned").exists():
            problems.append("wrote " + ("output_dir" if out.exists() else "the marker"))
        if problems:
            failures.append(f"{case.name}: {', '.join(problems)}\n    {text.strip()[-400:]!r}")
        (inputs / "recipe.yaml").unlink(missing_ok=True)
    after = sorted(p.name for p in tmp_path.rglob("*"))
    print(f"fuzz: {len(cases)} malformed inputs, {len(failures)} not refused cleanly")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:200])
    assert after == before, set(after) ^ set(before)
