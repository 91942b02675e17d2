"""Rollout transcripts: what the policy actually sampled, for a person to read while an RL run trains.

Every `training.log_rollouts_every` steps (and at step 1, to check the prompt format early) the first few prompts of
the step's batch, each with every completion of its group, its reward and its advantage, are written to
output_dir/rollouts/step-N.jsonl (one completion a line), step-N.html (a page a browser opens; all text escaped),
a few of them as plain lines on the console (and so in the run's log), and, when wandb is on, a `rollouts` table at
step N. The Tinker RL driver and the local GRPO/RLOO trainers (through
fai_rl.backends.local.rollouts) hand the same rows here, so both backends write the same files.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from fai_rl.tracking import log_to_wandb

PROMPTS_SHOWN = 4  # prompts per transcript, each with its whole group
COLUMNS = ("step", "group", "prompt", "completion", "reward", "advantage")


def due(step: int, every: int) -> bool:
    """Whether optimizer step `step` (from 1) writes a transcript: step 1 and every `every`-th step; 0 never."""
    return every > 0 and (step == 1 or step % every == 0)


def as_text(prompt) -> str:
    """A prompt or completion as plain text: a string as is, chat messages as `role: content` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


def first_groups(prompts: list, n: int = PROMPTS_SHOWN) -> list[int]:
    """Group index of each entry, entries grouped by equal prompt in order of first appearance; -1 past the first
    `n` groups."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        key = json.dumps(p, sort_keys=True, default=str)
        if key not in seen and len(seen) < n:
            seen[key] = len(seen)
        out.append(seen.get(key, -1))
    return out


def write_transcript(output_dir: Path, step: int, rows: list[dict]) -> Path:
    """rollouts/step-N.jsonl and .html from rows {group, prompt, completion, reward, advantage, ...}; the wandb table.

    Extra keys of a row (e.g. per-function rewards, the completion's length) go into the jsonl as they are.
    """
    folder = Path(output_dir) / "rollouts"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": step, **row} for row in rows]
    path = folder / f"step-{step}.jsonl"
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows), encoding="utf-8")
    (folder / f"step-{step}.html").write_text(_html(step, rows), encoding="utf-8")
    wandb_table(step, rows)
    print(console_text(step, rows, folder / f"step-{step}.html"), flush=True)
    return path


CONSOLE_PROMPTS, CONSOLE_COMPLETIONS, CONSOLE_WIDTH = 2, 3, 100  # what the console shows of a transcript


def console_text(step: int, rows: list[dict], page: Path) -> str:
    """A few prompts of the transcript, each with its first completions, reward and advantage, one line each (plain
    text: the console and the log file show the same); the whole transcript is on `page`."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("group", 0), []).append(row)
    lines = [f"samples at step {step} ({len(rows)} completions of {len(groups)} prompts in {page})"]
    for group, members in list(groups.items())[:CONSOLE_PROMPTS]:
        lines.append(f"  prompt {group + 1}: {_line(members[0]['prompt'])}")
        for m in members[:CONSOLE_COMPLETIONS]:
            adv = m.get("advantage")
            adv_text = f"  adv {adv:+.2f}" if isinstance(adv, (int, float)) and math.isfinite(adv) else ""
            lines.append(f"    reward {_number(m.get('reward')):>6}{adv_text}  | {_line(m.get('completion', ''))}")
    return "\n".join(lines)


def _line(text) -> str:
    """Text on one line (newlines shown as ⏎), cut to CONSOLE_WIDTH characters."""
    flat = as_text(text).replace("\n", " ⏎ ")
    return flat if len(flat) <= CONSOLE_WIDTH else flat[: CONSOLE_WIDTH - 1] + "…"


def wandb_table(step: int, rows: list[dict]) -> None:
    """The rows as a wandb Table named `rollouts` at `step` (nothing when no wandb run is active)."""
    import sys

    wandb = sys.modules.get("wandb")
    if getattr(wandb, "run", None) is None:
        return
    table = wandb.Table(columns=list(COLUMNS), data=[[_cell(row.get(c)) for c in COLUMNS] for row in rows])
    log_to_wandb(step, {"rollouts": table})


def _cell(value):
    return value if isinstance(value, (int, float)) else as_text(value) if value is not None else ""


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else html.escape(str(value))


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5em;margin:0}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3em;vertical-align:top;text-align:left}
.num{white-space:nowrap;font-variant-numeric:tabular-nums}.pos{color:#1a7f37}.neg{color:#cf222e}"""


def _html(step: int, rows: list[dict]) -> str:
    """One section per prompt: the prompt, then a table of its completions with reward and advantage (escaped)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>rollouts at step {step}</title>"
             f"<style>{_STYLE}</style></head><body><h1>Rollouts at step {step}</h1>"]
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("group", 0), []).append(row)
    for group, members in groups.items():
        rewards = [m["reward"] for m in members if isinstance(m.get("reward"), (int, float))]
        mean = f"; mean reward {sum(rewards) / len(rewards):.4g}" if rewards else ""
        parts.append(f"<h2>prompt {group + 1} ({len(members)} completions{mean})</h2>"
                     f"<pre>{html.escape(as_text(members[0]['prompt']))}</pre>")
        parts.append("<table><tr><th>#</th><th>reward</th><th>advantage</th><th>completion</th></tr>")
        for n, m in enumerate(members, start=1):
            adv = m.get("advantage")
            sign = " pos" if isinstance(adv, (int, float)) and adv > 0 else " neg" if isinstance(
                adv, (int, float)) and adv < 0 else ""
            parts.append(f"<tr><td>{n}</td><td class='num'>{_number(m.get('reward'))}</td>"
                         f"<td class='num{sign}'>{_number(adv)}</td>"
                         f"<td><pre>{html.escape(as_text(m.get('completion', '')))}</pre></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
