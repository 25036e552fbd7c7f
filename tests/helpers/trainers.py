"""The one quiet CPU Trainer every test builds on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

#: What makes a Trainer quiet: on the CPU, no logger, checkpoint, progress bar or model summary unless a test asks.
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(root: str | os.PathLike | None, callbacks: Sequence[Callback] = (), **kwargs: Any) -> pl.Trainer:
    """A :data:`QUIET` Trainer whose files go under ``root`` (``None``: Lightning's default, the working directory,
    which the test fixtures make the test's ``tmp_path``); ``kwargs`` override any setting."""
    settings = {**QUIET, **({"default_root_dir": str(root)} if root is not None else {}), **kwargs}
    return pl.Trainer(callbacks=list(callbacks), **settings)
