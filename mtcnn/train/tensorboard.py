"""What a training run writes for TensorBoard: step scalars, epoch metrics, the validation
picture and the run's hyperparameters beside its final metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: The run folder's TensorBoard subfolder.
TENSORBOARD_DIR = "tensorboard"


class TrainingLog:
    """A TensorBoard event writer under ``run_dir/tensorboard``; with ``run_dir`` None (tests,
    benchmarks, ranks other than 0) every call does nothing."""

    def __init__(self, run_dir: Path | None) -> None:
        self.writer = None
        if run_dir is not None:
            # imported here: tensorboard is slow to import and runs without a folder never need it
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))

    def steps(self, values: Mapping[str, float], step: int) -> None:
        """Scalars of the latest training steps (``train/<name>``) at optimizer step ``step``."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, metrics: Mapping[str, float], lr: float, epoch: int, picture: np.ndarray | None) -> None:
        """An epoch's validation metrics (``val/<name>``), training loss and learning rate, and
        the validation picture (``uint8 [H, W, 3]``, or None)."""
        if self.writer is None:
            return
        for name, value in metrics.items():
            if name.startswith("val_"):
                self.writer.add_scalar(f"val/{name[4:]}", value, epoch)
        self.writer.add_scalar("epoch/train_loss", metrics["train_loss"], epoch)
        self.writer.add_scalar("epoch/lr", lr, epoch)
        if picture is not None:
            self.writer.add_image("val/crops", picture, epoch, dataformats="HWC")
        self.writer.flush()

    def hyperparameters(self, settings: Mapping[str, Any], final: Mapping[str, float]) -> None:
        """The run's settings beside its final metrics, for TensorBoard's HPARAMS tab."""
        if self.writer is None:
            return
        metrics = {f"hparam/{name}": value for name, value in final.items()}
        self.writer.add_hparams(dict(settings), metrics, run_name=".")

    @property
    def active(self) -> bool:
        """Whether anything is written (a picture costs a forward pass: skip it when not)."""
        return self.writer is not None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
