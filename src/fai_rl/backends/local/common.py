"""What every local (transformers/TRL) algorithm shares: recipe -> trainer arguments, metrics, resume, final save."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback, TrainingArguments

from fai_rl.algorithms import spec_of
from fai_rl.artifacts import DEEPSPEED_STATE, RunDir, checkpoints, missing_resume_files
from fai_rl.config.deepspeed import resolve_deepspeed_config
from fai_rl.config.schema import Recipe
from fai_rl.errors import BackendError, RecipeError
from fai_rl.models.checkpointing import add_partial_checkpointing
from fai_rl.models.lora_inputs import keep_lora_inputs_under_autocast
from fai_rl.models.load import (
    accelerator,
    bf16_gpu,
    use_bf16,
    use_fast_generation,
    use_gradient_checkpointing,
    use_liger_kernel,
    use_padding_free,
)
from fai_rl.progress import RunStopped, stop_requested
from fai_rl.s3 import Uploads, fetch_resume_checkpoint

# transformers 5.2x renamed gradient_checkpointing (the old name warns); older 5.x only knows the old one.
_CHECKPOINTING_ARG = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def start_cpu_processes() -> bool:
    """DeepSpeed in several processes without a GPU (tests, a laptop): start them over gloo; True if so.

    Must run before TrainingArguments or an Accelerator exist. accelerate would otherwise ask DeepSpeed's CPU
    accelerator for its default backend (oneCCL), which a plain torch does not have. (DDP on CPU needs nothing:
    the launcher sets ACCELERATE_USE_CPU.)
    """
    import torch

    if (int(os.environ.get("WORLD_SIZE", "1")) < 2 or torch.cuda.is_available()
            or os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true"):
        return False
    import deepspeed.ops
    from accelerate import PartialState

    # DeepSpeed's CPU accelerator would g++-compile a shared-memory all-reduce (1-2 min on first use) that a few
    # CPU processes gain nothing from: gloo does the collectives.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    PartialState(backend="gloo")
    return True


def resolved_performance(recipe: Recipe) -> dict:
    """The speed settings this machine resolves the recipe's null ("auto") values to; logged at the start of a run."""
    perf = {"gradient_checkpointing": use_gradient_checkpointing(recipe), "use_liger_kernel": use_liger_kernel(recipe)}
    if spec_of(recipe.training.algorithm).data in ("rows", "pairs"):  # SFT, DPO (CPT's blocks are all full already)
        perf["padding_free"] = use_padding_free(recipe)
    if spec_of(recipe.training.algorithm).samples:  # GRPO's, RLOO's and PPO's sampling: fai_rl.decode
        perf["fast_generation"] = use_fast_generation(recipe) and not recipe.training.use_vllm
    return perf


def check_precision(recipe: Recipe) -> None:
    """training.fp16 needs a CUDA GPU: on CPU there is no float16 GradScaler, and accelerate would run it anyway.
    bf16: true without a bf16 GPU runs in float32 (use_bf16), said here once."""
    if recipe.training.bf16 and not bf16_gpu() and int(os.environ.get("RANK", "0")) == 0:
        print("note: training.bf16: true, but no GPU here runs bf16 mixed precision; this run trains in float32 "
              "(the same recipe trains in bf16 on a GPU).", flush=True)
    if recipe.training.fp16 and accelerator() != "cuda":
        raise BackendError(
            "training.fp16: true, but this machine has no CUDA GPU; float16 mixed precision needs one (its loss "
            "scaling is a CUDA GradScaler). Set training.fp16=false (float32 on CPU), or run on a GPU."
        )


def trainer_arguments(recipe: Recipe, has_eval: bool, count_input_tokens: bool = True) -> dict:
    """The recipe's `training:` keys as transformers/TRL TrainingArguments keyword arguments: the one mapping."""
    t = recipe.training
    configured = start_cpu_processes()
    perf = resolved_performance(recipe)
    if perf["use_liger_kernel"]:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise BackendError(
                "training.use_liger_kernel: true but liger-kernel is not installed; pip install 'fai-rl[liger]', or "
                "set it null (auto) or false."
            )
    return {  # perf is said in the run's header (fai_rl.cli.header)
        "output_dir": t.output_dir,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "optim": t.optim,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": use_bf16(recipe),
        "fp16": t.fp16,  # rules refuse it with bf16 true; a null bf16 resolves to false under it (use_bf16)
        _CHECKPOINTING_ARG: perf["gradient_checkpointing"],
        "use_liger_kernel": perf["use_liger_kernel"],
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        # weights only (no optimizer, scheduler, RNG): --resume then continues with a fresh optimizer (find_resume_point)
        "save_only_model": t.save_only_model,
        "eval_strategy": "steps" if t.eval_steps is not None else "no",
        "eval_steps": t.eval_steps,
        "eval_on_start": has_eval,  # the "before" number every run's summary compares against
        "prediction_loss_only": t.prediction_loss_only,
        # keep the best checkpoint (rules.py: eval data, eval_steps, save_steps a multiple of them): HF Trainer
        # tracks it at each evaluation, never rotates it out (save_total_limit), and with load_best_model_at_end
        # reloads it before final/ is saved
        "metric_for_best_model": t.metric_for_best_model,
        "greater_is_better": t.greater_is_better,
        "load_best_model_at_end": t.load_best_model_at_end,
        "deepspeed": resolve_deepspeed_config(recipe, use_bf16(recipe)) if t.deepspeed_config else None,
        "accelerator_config": {"use_configured_state": configured},  # keep the gloo state set up just above
        # false by default: every trainable weight is used, and the search costs a graph walk a step
        "ddp_find_unused_parameters": t.ddp_find_unused_parameters,
        # wandb gets metrics.jsonl's rows from RunDir.log_metrics (fai_rl.tracking), the same names on every backend
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding" if count_input_tokens else "no",
        "dataloader_num_workers": t.dataloader_num_workers,
        "dataloader_pin_memory": t.dataloader_pin_memory if t.dataloader_pin_memory is not None
        else accelerator() == "cuda",
        "dataloader_drop_last": t.dataloader_drop_last,
        # SFT/DPO rows are already model inputs and TRL's collators pick their keys by name, so either value trains
        # the same; GRPO/GSPO reward functions read the other columns (answer), so those keep every column
        "remove_unused_columns": recipe.data.remove_unused_columns and not spec_of(t.algorithm).samples_groups,
        "disable_tqdm": True,  # metrics.jsonl and the log lines below say the same, one line per logging step
    }


def quiet_progress_bars() -> None:
    """Per-shard and per-map progress bars flood logs (and --nohup files); our metrics lines say what matters."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


class MetricsCallback(TrainerCallback):
    """Appends every log HF Trainer makes (train and eval) to metrics.jsonl, moves the progress line on every step,
    and stops cleanly (a checkpoint saved first) when the run is asked to stop (fai_rl.progress)."""

    def __init__(self, run: RunDir):
        self.run = run
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.progress.begin(state.max_steps, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.progress.tick(state.global_step, state.max_steps)
        if all_ranks_agree(stop_requested(self.run.path)) and state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.run.log_metrics(state.global_step, logs, total=state.max_steps)


def all_ranks_agree(flag: bool) -> bool:
    """A stop seen by any process stops all of them at the same step (one all-reduce a step, only when several)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def peak_gpu_memory_gib() -> float | None:
    """Peak GPU memory this process allocated (None on CPU)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


@dataclass
class ResumePoint:
    path: Path
    step: int
    weights_only: bool = False  # saved with training.save_only_model: no optimizer, scheduler or RNG state


def find_resume_point(recipe: Recipe, resume: str | None) -> ResumePoint | None:
    """The checkpoint --resume means (latest in output_dir, or a given dir), checked to hold full training state."""
    resume = fetch_resume_checkpoint(recipe, resume)  # from s3:// (or the store's newer checkpoint) into output_dir
    if resume is None:
        return None
    weights_only = recipe.training.save_only_model
    if resume == "latest":
        found = checkpoints(Path(recipe.training.output_dir))
        complete = [c for c in found if not missing_resume_files(c, weights_only)]
        if not found:
            raise RecipeError(
                f"--resume: no checkpoint-N in training.output_dir '{recipe.training.output_dir}' to resume from; "
                "run without --resume to start, or pass --resume PATH to a checkpoint."
            )
        path = complete[-1] if complete else found[-1]  # a checkpoint cut short by a kill is skipped
        if complete and path != found[-1]:
            print(f"--resume: skipping {found[-1].name} (incomplete, the run stopped while writing it)")
    else:
        path = Path(resume)
        if not path.is_dir():
            raise RecipeError(f"--resume: '{resume}' is not a checkpoint directory; give a checkpoint-N dir.")
    if weights_only and missing_resume_files(path):  # weights only, as this recipe saves them
        return _weights_only_resume_point(recipe, path)
    missing = missing_resume_files(path)
    if missing:
        raise RecipeError(
            f"--resume: '{path}' holds weights only (no {', '.join(missing)}), so the optimizer, schedule and data "
            "position cannot be restored and resume is impossible; start a fresh run (optionally from these weights "
            "via model.base_model_name)."
        )
    saved_by_deepspeed = (path / DEEPSPEED_STATE).exists()
    if saved_by_deepspeed != bool(recipe.training.deepspeed_config):
        raise RecipeError(
            f"--resume: '{path}' was saved {'under' if saved_by_deepspeed else 'without'} DeepSpeed but "
            f"training.deepspeed_config is {recipe.training.deepspeed_config or 'null'}; the optimizer state is kept "
            "in a different form, so resume with the training.deepspeed_config (and process count) that saved it."
        )
    step = json.loads((path / "trainer_state.json").read_text())["global_step"]
    return ResumePoint(path=path, step=int(step))


def _weights_only_resume_point(recipe: Recipe, path: Path) -> ResumePoint:
    """--resume from a checkpoint of a training.save_only_model run: its weights, a fresh optimizer, and the schedule
    and data position continued at its step (HF Trainer restores the step and skips the data; run_trainer moves the
    schedule on)."""
    if missing_resume_files(path, weights_only=True):
        raise RecipeError(
            f"--resume: '{path}' has no trainer_state.json (the run stopped while writing it); give an earlier "
            "checkpoint-N."
        )
    if recipe.training.deepspeed_config:
        raise RecipeError(
            f"--resume: '{path}' holds weights only (training.save_only_model: true), and under "
            "training.deepspeed_config HF Trainer resumes from DeepSpeed's own checkpoint, which was not saved; start a "
            "fresh run from these weights (model.base_model_name), or train with save_only_model false to resume."
        )
    step = int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"--resume: {path.name} holds no optimizer state (training.save_only_model: true); continuing from its "
              f"weights with a fresh optimizer, the learning-rate schedule continued at step {step} and the data "
              "position skipped", flush=True)
    return ResumePoint(path=path, step=step, weights_only=True)


class ContinueSchedule(TrainerCallback):
    """A fresh learning-rate scheduler moved on to the resumed step (a save_only_model checkpoint has no
    scheduler.pt): HF Trainer restores global_step and the data position but would restart the warm-up."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        import warnings

        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.global_step - lr_scheduler.last_epoch):
                lr_scheduler.step()


def save_final(trainer, tokenizer, recipe: Recipe, run: RunDir) -> Path:
    """output_dir/final: a full HF model dir, or a PEFT adapter with fai_rl.json naming its base.

    Every process calls this (under ZeRO-3 `save_model` gathers the shards); the main process writes into a staging
    dir and renames it into place, so final/ is never half-written.
    """
    staging = run.path / ".final.partial"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if main:
        tokenizer.save_pretrained(staging)
        note = {
            "base_model_name": recipe.model.base_model_name,
            "kind": "peft_adapter" if recipe.model.use_lora else "full_model",
            "algorithm": recipe.training.algorithm,
            "global_step": trainer.state.global_step,
        }
        if recipe.model.init_from:
            note["init_from"] = recipe.model.init_from  # the start; a LoRA run's base_model_path is its merged copy
        if recipe.model.use_lora:
            adapter = json.loads((staging / "adapter_config.json").read_text())
            note["base_model_path"] = adapter.get("base_model_name_or_path")
            note["load_with"] = "peft.AutoPeftModelForCausalLM.from_pretrained(final_dir)"
        else:
            note["load_with"] = "transformers.AutoModelForCausalLM.from_pretrained(final_dir)"
        (staging / "fai_rl.json").write_text(json.dumps(note, indent=2) + "\n")
        shutil.rmtree(run.path / "final", ignore_errors=True)
        os.replace(staging, run.path / "final")
    trainer.accelerator.wait_for_everyone()
    return run.path / "final"


def run_trainer(trainer, recipe: Recipe, tokenizer, resume: ResumePoint | None, run: RunDir, has_eval: bool):
    """Train an HF/TRL trainer, evaluate at the end if the last step was not, save final/; summary on the main rank.

    The trainer must have been built with MetricsCallback(run); it replaces HF's PrinterCallback, whose dict
    dumps would say the same as the compact lines.
    """
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    # TRL writes its auto card ("fine-tuned version of [None]") into output_dir/README.md at every checkpoint; the
    # run's card is fai-rl-train's (fai_rl.export.card.run_card, written when the run ends), so TRL writes none.
    trainer.create_model_card = lambda *args, **kwargs: None
    if resume is not None and resume.weights_only:
        trainer.add_callback(ContinueSchedule())
    add_partial_checkpointing(trainer, recipe)  # null gradient_checkpointing on: only the layers memory needs
    keep_lora_inputs_under_autocast(trainer.model)
    from fai_rl.backends.local.trl_resume import keep_trl_state

    keep_trl_state(trainer, resume.path if resume and not resume.weights_only else None)  # TRL's own state
    uploads = Uploads(recipe, main=trainer.is_world_process_zero())  # s3: checkpoint-N in the background, final/ below
    if recipe.s3.enabled:  # after keep_trl_state's callback: its files are in checkpoint-N before the upload starts
        trainer.add_callback(uploads.callback())
    seen_before = _tokens_seen(resume) if resume else 0  # read now: save_total_limit may rotate the checkpoint out
    result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    state = trainer.state
    stopped = next((c.stopped_at for c in trainer.callback_handler.callbacks if isinstance(c, MetricsCallback)), None)
    if stopped is not None:  # asked to stop: checkpoint-N is written; no final evaluation, no final/
        raise RunStopped(stopped, str(run.path / f"checkpoint-{stopped}"))
    evaluated = [log["step"] for log in state.log_history if any(k.startswith("eval_") for k in log)]
    if has_eval and max(evaluated, default=-1) != state.global_step:
        trainer.evaluate()  # logged through MetricsCallback like every other evaluation
    final = save_final(trainer, tokenizer, recipe, run)
    if not trainer.is_world_process_zero():
        return None
    uploads.final(final)
    runtime = result.metrics.get("train_runtime", 0.0)
    tokens = state.num_input_tokens_seen - seen_before
    if not tokens:  # trainers that count tokens themselves (GRPO's num_tokens: prompts + completions)
        tokens = max((log.get("num_tokens", 0) for log in state.log_history), default=0)
    return run.write_summary(
        algorithm=recipe.training.algorithm,
        backend=recipe.training.backend,
        global_step=state.global_step,
        resumed_from_step=resume.step if resume else None,
        train_runtime_s=round(runtime, 2),
        train_tokens=int(tokens),
        tokens_per_s=round(tokens / runtime, 1) if runtime else None,
        peak_gpu_memory_gib=peak_gpu_memory_gib(),
        processes=trainer.accelerator.num_processes,
        final_dir=str(final),
        **uploads.summary(),
        **({"best_checkpoint": state.best_model_checkpoint, "best_metric": state.best_metric,
            "metric_for_best_model": recipe.training.metric_for_best_model}
           if recipe.training.metric_for_best_model else {}),
    )


def _tokens_seen(resume: ResumePoint) -> int:
    return int(json.loads((resume.path / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0))
