"""Logger helpers shared by every callback: scalars to all of the Trainer's loggers, text and images to TensorBoard,
and the directory for a callback's files (written through :mod:`epochkit._io`). Tag names are grouped by prefix
(``warmup/...``, ``early_stopping/...``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from epochkit._io import write_json_atomic  # noqa: F401  (re-exported for the callbacks that write reports)

log = logging.getLogger("epochkit")


def current_step(trainer: pl.Trainer) -> int:
    """The step Lightning itself logs training metrics at (optimizer steps taken, across all optimizers)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send ``metrics`` to every logger of ``trainer`` at ``step`` (default :func:`current_step`), from rank 0."""
    if not trainer.loggers or not trainer.is_global_zero or not metrics:
        return
    at = current_step(trainer) if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=at)


def log_text(trainer: pl.Trainer, tag: str, text: str, step: int | None = None) -> None:
    """Write ``text`` (Markdown) under ``tag`` to every TensorBoard logger of ``trainer``, from rank 0."""
    if not trainer.is_global_zero:
        return
    at = current_step(trainer) if step is None else step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, global_step=at)


def log_image(trainer: pl.Trainer, tag: str, image: Any, step: int | None = None) -> bool:
    """Write an RGB ``uint8`` image (``height x width x 3``) under ``tag`` to every TensorBoard logger of ``trainer``
    (``SummaryWriter.add_image``), from rank 0; whether any logger took it."""
    if not trainer.is_global_zero:
        return False
    at = current_step(trainer) if step is None else step
    written = False
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=at, dataformats="HWC")
            written = True
    return written


def has_tensorboard(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` logs to TensorBoard."""
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def log_dir(trainer: pl.Trainer) -> Path:
    """Where a callback's files go: the first logger's directory, else the Trainer's ``default_root_dir``."""
    for logger in trainer.loggers:
        if logger.log_dir is not None:
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)
