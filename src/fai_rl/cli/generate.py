"""`fai-rl-generate`: completions of prompts from a file, stdin or the command line, as JSONL.

    fai-rl-generate --model runs/sft "What is 2 + 3?"
    fai-rl-generate --model runs/lora/final --input prompts.jsonl --output out.jsonl --num-samples 4 --temperature 0.8
    echo "What is 7 - 2?" | fai-rl-generate --model tinker://<run>/sampler_weights/final --base-model Qwen/Qwen3-4B

The model is a run dir, final/ or checkpoint-N dir, LoRA adapter dir, hub id, built-in model or tinker:// path
(fai_rl.models.source). Input: .jsonl rows with a `prompt` (text) or `messages` (a conversation) column, or plain text
with one prompt per line; `-` or no --input reads stdin. Prompts go through the model's chat template
(--no-chat-template sends them as plain text), in batches. Output: one JSON line per sample, {index, sample, prompt, completion,
finish_reason, num_tokens}, plus the input row's other columns; written to a temporary file and renamed, so --output
is never half-written. Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fai_rl.cli import report_errors
from fai_rl.errors import UsageError



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fai-rl-generate", description="Generate completions from a trained model.")
    p.add_argument("prompts", nargs="*", help="prompts given on the command line (else --input, else stdin)")
    p.add_argument("--model", required=True, help="run dir, final/ or checkpoint dir, adapter dir, hub id, built-in "
                   "model or tinker:// sampler path")
    p.add_argument("--base-model", default=None, help="base model of a tinker:// path (supplies the tokenizer)")
    p.add_argument("--input", default=None, help="a .jsonl file of rows, or a text file with one prompt per line; "
                   "'-' reads stdin")
    p.add_argument("--output", default="-", help="JSONL output file ('-': stdout, the default)")
    p.add_argument("--prompt-column", default="prompt", help="column with the prompt text in .jsonl input")
    p.add_argument("--messages-column", default="messages", help="column with a conversation in .jsonl input")
    p.add_argument("--system-prompt", default=None, help="system message put first in prompts that have none")
    p.add_argument("--no-chat-template", action="store_true", help="send the prompts as plain text")
    p.add_argument("--num-samples", "-n", type=int, default=1, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 (default) is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest completion, in tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=64, help="sequences generated together (local models)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--tinker-base-url", default=None, help="Tinker service URL (default: TINKER_BASE_URL or the SDK's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-generate; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return report_errors("fai-rl-generate", lambda: _run(args))


def _check_args(args: argparse.Namespace) -> None:
    problems = []
    if args.num_samples < 1:
        problems.append(f"--num-samples {args.num_samples}: must be at least 1.")
    elif args.num_samples > 1 and args.temperature == 0:
        problems.append(f"--num-samples {args.num_samples} at --temperature 0 (greedy) gives identical samples; "
                        "add --temperature 1.0 (or any value > 0).")
    if args.temperature < 0:
        problems.append(f"--temperature {args.temperature}: must be 0 (greedy) or more.")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top-p {args.top_p}: must be in (0, 1].")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value < 1:
            problems.append(f"{flag} {value}: must be at least 1.")
    if args.prompts and args.input is not None:
        problems.append("prompts on the command line and --input together; give one of them.")
    if problems:
        raise UsageError("; ".join(problems))


def read_rows(args: argparse.Namespace) -> list[dict]:
    """Input rows, each with `messages` (the conversation to answer) and its other columns."""
    if args.prompts:
        texts, origin = args.prompts, "the command line"
        return [_text_row(t) for t in texts]
    if args.input in (None, "-"):
        if args.input is None and sys.stdin.isatty():
            raise UsageError("no prompts: give them as arguments, with --input FILE, or on stdin (--input -).")
        text, origin, jsonl = sys.stdin.read(), "stdin", None
    else:
        path = Path(args.input).expanduser()
        if not path.is_file():
            raise UsageError(f"--input: no such file: {args.input}; give a .jsonl file or a text file of prompts.")
        text, origin, jsonl = path.read_text(encoding="utf-8"), str(path), path.suffix.lower() == ".jsonl"
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if jsonl is None:  # stdin: JSONL when every line is a JSON object
        jsonl = bool(lines) and all(line.lstrip().startswith("{") for _, line in lines)
    rows = [_json_row(n, line, origin, args) for n, line in lines] if jsonl else [_text_row(line) for _, line in lines]
    if not rows:
        raise UsageError(f"no prompts in {origin}; give one prompt per line or JSONL rows with a "
                         f"'{args.prompt_column}' column.")
    return rows


def _text_row(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "columns": {"prompt": text}}


def _json_row(n: int, line: str, origin: str, args: argparse.Namespace) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"{origin}:{n}: not valid JSON ({e.msg}); one JSON object per line.") from None
    if not isinstance(row, dict):
        raise UsageError(f"{origin}:{n}: a {type(row).__name__}, not a JSON object.")
    prompt = row.get(args.prompt_column)
    if isinstance(prompt, str) and prompt.strip():
        return {"messages": [{"role": "user", "content": prompt}], "columns": row}
    messages = row.get(args.messages_column)
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if users:
            kept = [{"role": m["role"], "content": m.get("content", "")} for m in messages[: users[-1] + 1]]
            return {"messages": kept, "columns": {k: v for k, v in row.items() if k != args.messages_column}}
    raise UsageError(f"{origin}:{n}: no non-empty '{args.prompt_column}' text and no '{args.messages_column}' "
                     "conversation with a user turn; set --prompt-column / --messages-column to your columns.")


def _run(args: argparse.Namespace) -> int:
    from fai_rl.evaluation.samplers import open_sampler, render_chat
    from fai_rl.models.source import resolve_model_source

    _check_args(args)
    source = resolve_model_source(args.model, what="--model", base_model=args.base_model)
    rows = read_rows(args)
    if args.output != "-":
        out_path = Path(args.output).expanduser()
        if out_path.is_dir():
            raise UsageError(f"--output: '{args.output}' is a directory; name a .jsonl file.")
        if not out_path.parent.is_dir():
            raise UsageError(f"--output: the directory of '{args.output}' does not exist; create it first.")
    if args.system_prompt:
        for row in rows:
            if row["messages"][0]["role"] != "system":
                row["messages"].insert(0, {"role": "system", "content": args.system_prompt})
    print(f"fai-rl-generate: {source.describe()}, {len(rows)} prompts x {args.num_samples}", file=sys.stderr)
    sampler = open_sampler(source, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                           tinker_base_url=args.tinker_base_url)
    prompts = [render_chat(sampler.tokenizer, row["messages"], chat_template=not args.no_chat_template) for row in rows]
    groups = sampler.generate(prompts, n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    lines = []
    for i, (row, group) in enumerate(zip(rows, groups, strict=True)):
        for j, c in enumerate(group):
            record = {**row["columns"], "index": i, "sample": j, "prompt": row["messages"][-1]["content"],
                      "completion": c.text, "finish_reason": "stop" if c.stopped else "length",
                      "num_tokens": len(c.tokens)}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    if args.output == "-":
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    else:
        tmp = out_path.with_name(f".{out_path.name}.partial")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, out_path)
        print(f"fai-rl-generate: {len(lines)} completions in {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
