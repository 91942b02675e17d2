"""Rollout transcripts of the local GRPO/GSPO/RLOO trainers (TRL's GRPOTrainer / RLOOTrainer), as the Tinker driver
writes them (fai_rl.transcripts): at step 1 and every training.log_rollouts_every steps, rollouts/step-N.jsonl,
step-N.html and a wandb table.

TRL keeps the latest generation batch's prompts, completions, per-function rewards and advantages in the trainer's
`_logs` (filled on every step, gathered from every process; its own `log_completions` prints them with rich and
writes parquet). That record is read here rather than re-scoring anything: what is shown is what the step trained on.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from fai_rl.transcripts import as_text, due, first_groups, write_transcript
from fai_rl.artifacts import RunDir
from fai_rl.config.schema import Recipe


class RolloutTranscripts(TrainerCallback):
    """Writes a transcript of the step's batch at the steps fai_rl.due names (main process only)."""

    def __init__(self, recipe: Recipe, run: RunDir, trainer):
        self.every, self.run, self.trainer = recipe.training.log_rollouts_every, run, trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and due(state.global_step, self.every):
            rows = transcript_rows(self.trainer)
            if rows:
                write_transcript(self.run.path, state.global_step, rows)


def transcript_rows(trainer) -> list[dict]:
    """The first prompts of the trainer's latest batch, each with its group's completions, weighted total reward
    (TRL's: the per-function rewards times reward_weights, missing ones skipped), per-function rewards, advantage."""
    logs = getattr(trainer, "_logs", None)
    if not logs or not logs["prompt"]:
        return []
    prompts, completions, advantages = list(logs["prompt"]), list(logs["completion"]), list(logs["advantages"])
    names = list(getattr(trainer, "reward_func_names", logs["rewards"]))
    per_fn = {name: list(logs["rewards"][name]) for name in names if name in logs["rewards"]}
    weights = [float(w) for w in getattr(trainer, "reward_weights", [1.0] * len(names))]
    tokenizer = getattr(trainer, "processing_class", None)
    limit = getattr(trainer, "prompt_limit", None)  # data.max_length (fai_rl.backends.local.prompt_cut)
    rendered: dict[int, str] = {}
    rows = []
    for i, group in enumerate(first_groups(prompts)):
        if group < 0:
            continue
        scores = {name: per_fn[name][i] for name in per_fn}
        total = sum(w * scores[n] for w, n in zip(weights, names, strict=False)
                    if n in scores and not math.isnan(scores[n]))
        rows.append({"group": group, "prompt": rendered.setdefault(group, _prompt_text(tokenizer, prompts[i], limit)),
                     "completion": _completion_text(completions[i]), "reward": total, "advantage": advantages[i],
                     "rewards": scores})
    return rows


def _prompt_text(tokenizer, prompt, limit: int | None = None) -> str:
    """A conversational prompt as the model saw it (the chat template with the generation prompt; one longer than
    `limit` tokens decoded from its last `limit`, as the Tinker driver shows it); text as is."""
    if isinstance(prompt, str) or tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        return as_text(prompt)
    if limit:
        from fai_rl.sampling import render_chat

        ids = render_chat(tokenizer, prompt)
        if len(ids) > limit:
            return tokenizer.decode(ids[-limit:])
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def _completion_text(completion) -> str:
    """TRL's conversational completion ([{"role": "assistant", "content": ...}]) as its text."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)
