"""Host memory LRWarmup allocates for its factors, against the warmup's length: a 12-step fit with a 12-step warmup
and with warmups of 10**7 and 10**12 steps, peak traced memory (``tracemalloc``, which sees NumPy's buffers) measured
side by side in one run. Target: the same peak whatever the length (the factors are computed in blocks as the fit
reaches them; a table of the whole ramp took 1.3 GB for 10**7 steps).

    .venv/bin/python benchmarks/warmup_memory.py
"""

from __future__ import annotations

import sys
import tracemalloc
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet

from epochkit import LRWarmup

STEPS = 12


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def peak_megabytes(warmup_steps: int) -> float:
    """Peak traced memory of a STEPS-step fit with ``LRWarmup(steps=warmup_steps)``, in MB."""
    data = DataLoader(TensorDataset(torch.randn(STEPS * 4, 4), torch.randn(STEPS * 4, 1)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LRWarmup(steps=warmup_steps)],
    )
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the warmup is longer than the fit": that is the point here
        trainer.fit(Tiny(), data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    quiet()
    peak_megabytes(STEPS)  # warm up imports and lazy initialisations outside the measurements
    base = peak_megabytes(STEPS)
    print(f"LRWarmup(steps={STEPS}) on a {STEPS}-step fit: peak {base:.2f} MB")
    for steps in (10**7, 10**12):
        peak = peak_megabytes(steps)
        print(f"LRWarmup(steps={steps:.0e}): peak {peak:.2f} MB, {peak / base:.2f}x the {STEPS}-step warmup's")


if __name__ == "__main__":
    main()
