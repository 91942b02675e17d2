"""TensorBoard: event files in output_dir/tensorboard/ with every metrics.jsonl row, under its names and step.

Fed by RunDir.log_metrics, the one writer of metrics on every backend and algorithm, as wandb is (fai_rl.tracking),
so TensorBoard, wandb and metrics.jsonl never disagree. `tensorboard --logdir output_dir/tensorboard` shows them.
The writer is torch's SummaryWriter, which needs the tensorboard package (pip install 'fai-rl[tensorboard]').
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fai_rl.errors import BackendError

TENSORBOARD_DIR = "tensorboard"


def check_tensorboard(enabled: bool) -> None:
    """Before anything is written: tensorboard.enabled needs the tensorboard package."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise BackendError("tensorboard.enabled: true, but the tensorboard package is not installed; "
                           "pip install 'fai-rl[tensorboard]', or set tensorboard.enabled=false.")


class TensorBoardLog:
    """One SummaryWriter for the run, opened at the first row (so a run refused by its checks writes nothing)."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / TENSORBOARD_DIR
        self._writer = None

    def scalars(self, step: int, row: dict[str, float]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path), flush_secs=10)
        for key, value in row.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()  # a killed run keeps every row it logged

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
