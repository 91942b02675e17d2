"""Exact resume for TRL's GRPOTrainer / RLOOTrainer: the generation buffer and its position go into every checkpoint.

TRL generates completions for steps_per_generation x num_iterations micro-batches at once and serves them from
`_buffered_inputs`, indexed by its micro-batch counter `_step`; neither is in HF Trainer's checkpoint. A run resumed
from a checkpoint inside a generation window therefore generated again at once (TRL's "_buffered_inputs=None can occur
when resuming"), from a different RNG draw, and every later window was shifted: rewards differed from the
uninterrupted run from the first resumed step on. Weights, optimizer, scheduler, RNG and data position are HF
Trainer's to restore (and it does); this adds the two missing pieces, per process, as
checkpoint-N/grpo_buffer-rank{R}.pt (written to a temporary name and renamed, before trainer_state.json's callers
look: HF calls on_save after the checkpoint is complete, so a kill mid-write leaves a complete checkpoint without the
buffer, which resumes as TRL did before: regenerating, with a note).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback


def buffer_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"grpo_buffer-rank{rank}.pt"


class SaveGenerationBuffer(TrainerCallback):
    """on_save: this process's `_step` and `_buffered_inputs` into the checkpoint just written."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        path = buffer_file(checkpoint, trainer.accelerator.process_index)
        partial = path.with_name(path.name + ".partial")
        torch.save({"step": trainer._step, "buffered_inputs": trainer._buffered_inputs}, partial)
        os.replace(partial, path)


def restore_generation_buffer(trainer, checkpoint: Path | None) -> None:
    """Before trainer.train(resume_from_checkpoint=...): put back `_step` and `_buffered_inputs` saved with it."""
    if checkpoint is None:
        return
    path = buffer_file(checkpoint, trainer.accelerator.process_index)
    if not path.is_file():
        if trainer.args.steps_per_generation * trainer.num_iterations > 1:
            print(f"--resume: {Path(checkpoint).name} holds no generation buffer (saved by an older fai-rl); the "
                  "resumed run generates afresh at once, so it does not follow the interrupted run's samples exactly",
                  flush=True)
        return
    saved = torch.load(path, map_location=trainer.accelerator.device, weights_only=False)  # our own file
    trainer._step = saved["step"]
    trainer._buffered_inputs = saved["buffered_inputs"]
