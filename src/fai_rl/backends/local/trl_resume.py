"""Exact resume for TRL's trainers: the state they keep outside HF Trainer's checkpoint goes into every checkpoint.

HF Trainer restores weights, optimizer, scheduler, RNG and the data position; TRL keeps two more things of its own:

- GRPOTrainer / RLOOTrainer generate completions for steps_per_generation x num_iterations micro-batches at once and
  serve them from `_buffered_inputs`, indexed by the micro-batch counter `_step`. A run resumed inside a generation
  window generated again at once (TRL's "_buffered_inputs=None can occur when resuming"), from a different RNG
  draw, and every later window was shifted: rewards differed from the uninterrupted run from the first resumed step.
- SFTTrainer / DPOTrainer count the tokens trained on in `_total_train_tokens` (logged as `num_tokens`), which
  restarted from 0 (measured: num_tokens 146 at step 4 of a run resumed from checkpoint-3, 582 uninterrupted).

Both go, per process, into checkpoint-N/grpo_buffer-rank{R}.pt and checkpoint-N/trl_tokens-rank{R}.json, each
written to a temporary name and renamed. HF calls on_save after the checkpoint is complete, so a kill mid-write
leaves a complete checkpoint without them, which resumes as TRL does (regenerating, with a note; counting from 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback


def buffer_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"grpo_buffer-rank{rank}.pt"


def tokens_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"trl_tokens-rank{rank}.json"


def generates(trainer) -> bool:
    return hasattr(trainer, "_buffered_inputs")


class SaveTrlState(TrainerCallback):
    """on_save: this process's generation buffer (GRPO/RLOO) and token counter into the checkpoint just written."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        rank = trainer.accelerator.process_index
        if generates(trainer):
            path = buffer_file(checkpoint, rank)
            partial = path.with_name(path.name + ".partial")
            torch.save({"step": trainer._step, "buffered_inputs": trainer._buffered_inputs}, partial)
            os.replace(partial, path)
        if hasattr(trainer, "_total_train_tokens"):
            path = tokens_file(checkpoint, rank)
            path.with_name(path.name + ".partial").write_text(json.dumps({"total": trainer._total_train_tokens}))
            os.replace(path.with_name(path.name + ".partial"), path)


def keep_trl_state(trainer, checkpoint: Path | None) -> None:
    """Save TRL's own state with every checkpoint; before trainer.train(resume_from_checkpoint=checkpoint), put back
    what was saved with it (None: a fresh run, or weights only)."""
    trainer.add_callback(SaveTrlState(trainer))
    if checkpoint is None:
        return
    rank = trainer.accelerator.process_index
    if hasattr(trainer, "_total_train_tokens") and tokens_file(checkpoint, rank).is_file():
        trainer._total_train_tokens = json.loads(tokens_file(checkpoint, rank).read_text())["total"]
    if not generates(trainer):
        return
    path = buffer_file(checkpoint, rank)
    if not path.is_file():
        if trainer.args.steps_per_generation * trainer.num_iterations > 1:
            print(f"--resume: {Path(checkpoint).name} holds no generation buffer (saved by an older fai-rl); the "
                  "resumed run generates afresh at once, so it does not follow the interrupted run's samples exactly",
                  flush=True)
        return
    saved = torch.load(path, map_location=trainer.accelerator.device, weights_only=False)  # our own file
    trainer._step = saved["step"]
    trainer._buffered_inputs = saved["buffered_inputs"]
