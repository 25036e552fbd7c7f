"""Shared pieces of the benchmark scripts: interleaved timing of the digits fit, and medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch

from epochkit.demo import DigitsClassifier, DigitsDataModule


def digits_fit_seconds(callbacks: Sequence[pl.Callback], epochs: int = 10, seed: int = 0) -> float:
    """Wall time of one digits fit (no logger, no checkpoints, no progress bar) with ``callbacks``."""
    pl.seed_everything(seed, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    model, data = DigitsClassifier(), DigitsDataModule(seed=seed)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], float]], repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Run each named measurement ``repeats`` times, alternating, so machine noise hits all of them alike, after a
    discarded warm-up round (``warm_up=False``: none, for the scripts' ``--quick`` smoke runs)."""
    out: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values() if warm_up else ():  # warm-up round, discarded
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            out[name].append(run())
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def quiet() -> None:
    """Silence Lightning's per-fit info lines and pin threads so runs are comparable."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
