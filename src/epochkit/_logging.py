"""Logger helpers shared by every callback: scalars to all of the Trainer's loggers, text and images to TensorBoard,
and the directory for a callback's files (written through :mod:`epochkit._io`). Tag names are grouped by prefix
(``warmup/...``, ``early_stopping/...``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger, TensorBoardLogger


def current_step(trainer: pl.Trainer) -> int:
    """The step Lightning itself logs at from the hook running now, so that epochkit's curves line up with its own.

    That is the index of the training batch that runs now or ran last (counted in batches that stepped the
    optimizers). Lightning counts a batch after its validation has run, so from ``on_train_epoch_end`` until the next
    batch its counter is one ahead, and Lightning logs the epoch's metrics at the step before (``_FitLoop`` decrements
    around them): so does this. In a batch's hooks and in validation the counter is the batch's own index.
    """
    loop = trainer.fit_loop.epoch_loop
    step = int(loop._batches_that_stepped)
    progress = loop.batch_progress.current
    between_epochs = progress.ready > 0 and progress.completed == progress.ready  # the epoch's last batch is done
    if step > 0 and between_epochs and not (trainer.validating or trainer.sanity_checking):
        return step - 1
    return step


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send ``metrics`` to every logger of ``trainer`` at ``step`` (default :func:`current_step`), from rank 0.

    A TensorBoard logger gets them as one event (see :func:`_tensorboard_scalars`); every other logger through its
    ``log_metrics``.
    """
    if not trainer.loggers or not trainer.is_global_zero or not metrics:
        return
    at = current_step(trainer) if step is None else step
    for logger in trainer.loggers:
        if not _tensorboard_scalars(logger, metrics, at):
            logger.log_metrics(dict(metrics), step=at)


def _tensorboard_scalars(logger: Logger, metrics: Mapping[str, float], step: int) -> bool:
    """Write ``metrics`` to a ``TensorBoardLogger``'s event file as one event holding one value per tag; False
    (nothing written) where that does not apply: another logger, a logger ``prefix``, a subclass that overrides
    ``log_metrics``, a writer other than torch's
    ``SummaryWriter``, a value that is not a real number.

    ``TensorBoardLogger.log_metrics`` writes one event per scalar (``add_scalar``), each handed to TensorBoard's
    writer thread through its queue; a callback logging five scalars per check paid that five times. The values,
    tags and step are the same (``simple_value``, as ``add_scalar`` writes them), and TensorBoard reads several
    values per event as it reads one.
    """
    prefix: Any = getattr(logger, "_prefix", None)
    if not isinstance(logger, TensorBoardLogger) or prefix:
        return False
    if type(logger).log_metrics is not TensorBoardLogger.log_metrics:
        return False  # a subclass that does its own work in log_metrics must see every call
    if not all(isinstance(value, int | float) for value in metrics.values()):
        return False
    # Imported here: torch's TensorBoard writer is loaded only by a TensorBoardLogger's experiment.
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    experiment = logger.experiment
    file_writer = getattr(experiment, "_get_file_writer", None)
    if not isinstance(experiment, SummaryWriter) or file_writer is None:
        return False
    tags = tuple(metrics)
    summaries: dict[tuple[str, ...], Any] = _SUMMARIES.__dict__.setdefault("by_tags", {})
    summary = summaries.get(tags)
    if summary is None:  # built once per tag set: a check of EarlyStopping writes the same tags every time
        summary = summaries[tags] = Summary(value=[Summary.Value(tag=tag) for tag in tags])
    for slot, value in zip(summary.value, metrics.values(), strict=True):
        slot.simple_value = float(value)
    file_writer().add_summary(summary, step)  # serialized here, at once: the next call may refill the values
    return True


# The Summary of each set of tags written by _tensorboard_scalars, its values refilled at each call (building the
# protobuf values costs about 4 us a scalar, refilling them 0.3 us); one set per thread, as two fits may run in two.
_SUMMARIES = threading.local()


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
