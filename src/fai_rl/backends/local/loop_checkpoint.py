"""Resumable checkpoints for the one-process loops written here (the local workflow loop): what HF Trainer saves for
its trainers, in the same layout, so fai_rl.backends.local.common.find_resume_point, --resume, s3 uploads and
fai-rl-runs read them as they read HF's.

checkpoint-N/ holds the weights as save_pretrained writes them (a PEFT adapter, or the full model: loadable as they
are), optimizer.pt, scheduler.pt, rng_state.pth (torch CPU/CUDA, Python and NumPy generators: the sampler draws from
torch's) and trainer_state.json (global_step and the loop's running state: counters and the logging window), written
last. Data position needs nothing more: fai_rl.schedule gives every step's rows from the step alone. The dir is
written as checkpoint-N.partial and renamed, so a kill mid-save leaves no checkpoint-N.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from fai_rl.artifacts import checkpoints

STATE_FILE = "trainer_state.json"


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, state: dict, keep: int | None) -> Path:
    """output_dir/checkpoint-`step` (staged, renamed); then the oldest beyond `keep` (save_total_limit) go."""
    final = Path(out) / f"checkpoint-{step}"
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(scheduler.state_dict(), staging / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               staging / "rng_state.pth")
    (staging / STATE_FILE).write_text(json.dumps({"global_step": step, **state}) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # a resumed run writes its checkpoints again
    os.replace(staging, final)
    if keep:
        for old in checkpoints(Path(out))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Put weights, optimizer, scheduler and RNG back from checkpoint dir `path`; the loop's saved state."""
    from safetensors.torch import load_file

    path = Path(path)
    adapter = path / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
    else:
        weights = {}
        for file in sorted(path.glob("model*.safetensors")):
            weights.update(load_file(file))
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
        assert not unexpected, f"{path}: weights that are not the model's: {unexpected[:3]}"
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng_state.pth", weights_only=False)  # our own file (Python's state is a tuple)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())
