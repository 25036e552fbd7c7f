"""Logger helpers shared by every callback: scalars to all of the Trainer's loggers, text to TensorBoard, atomic
files in the logger's directory. Tag names are grouped by prefix (``warmup/...``, ``early_stopping/...``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

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


def log_dir(trainer: pl.Trainer) -> Path:
    """Where a callback's files go: the first logger's directory, else the Trainer's ``default_root_dir``."""
    for logger in trainer.loggers:
        if logger.log_dir is not None:
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that a reader never sees a half-written file (temp file, then ``os.replace``).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "report.json"
        >>> write_json_atomic(target, {"coverage": 1.0})
        >>> target.read_text()
        '{\\n  "coverage": 1.0\\n}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv_atomic(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV (header: every key, in first-seen order) with the same temp-file-then-replace as
    :func:`write_json_atomic`.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "folds.csv"
        >>> write_csv_atomic(target, [{"fold": 0, "acc": 0.9}, {"fold": 1, "loss": 0.3}])
        >>> target.read_text().splitlines()
        ['fold,acc,loss', '0,0.9,', '1,,0.3']
    """
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
