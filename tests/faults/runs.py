"""The runs the fault tests kill or starve, as scripts: ``python -m tests.faults.runs {cv,fit} ROOT``.

Each is small and deterministic (CPU, deterministic algorithms, seeded), prints ``READY`` once imported and
``EPOCH <run> <epoch>`` after every training epoch (flushed), so a test can kill it at a known point, and ``DONE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

from epochkit import CrossValidator, EarlyStopping, LRWarmup, ShuffleAudit
from tests.helpers import RegressionDataModule, RegressionModule

QUIET: dict[str, Any] = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}


class EpochPrinter(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print("EPOCH", Path(trainer.default_root_dir).name, trainer.current_epoch, flush=True)


def cross_validation(root: str) -> None:
    """3 folds x 10 epochs of the regression module, with out-of-fold predictions and resume checkpoints."""
    pl.seed_everything(0, verbose=False)
    CrossValidator(3, root_dir=root, verbose=False).fit(
        RegressionModule(),
        RegressionDataModule(num_samples=48, batch_size=8),
        trainer_kwargs={**QUIET, "max_epochs": 10, "callbacks": [EpochPrinter()]},
    )


class SeededOrderData(RegressionDataModule):
    """Shuffled by a sampler whose order depends only on (seed, epoch), as a resumable pipeline's must: Lightning's
    checkpoints do not hold the global RNG, so a ``shuffle=True`` loader would draw other orders after a resume."""

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.train_set, num_replicas=1, rank=0, shuffle=True, seed=self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)


def fit(root: str) -> None:
    """6 epochs with ShuffleAudit, EarlyStopping(restore_best_weights=True), LRWarmup over 2.5 epochs and a
    ModelCheckpoint(save_last=True); resumes from ``root/ckpt/last.ckpt`` when it exists; saves the final weights."""
    pl.seed_everything(0, verbose=False)
    last = Path(root) / "ckpt" / "last.ckpt"
    trainer = pl.Trainer(
        **QUIET,
        max_epochs=6,
        logger=False,
        default_root_dir=root,
        callbacks=[
            ShuffleAudit(on_issue="raise"),
            EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
            LRWarmup(steps=15),
            ModelCheckpoint(dirpath=str(last.parent), save_last=True),
            EpochPrinter(),
        ],
    )
    trainer.fit(
        RegressionModule(lr=0.2),
        datamodule=SeededOrderData(num_samples=48, batch_size=8),
        ckpt_path=str(last) if last.exists() else None,
        weights_only=True,  # every callback's state is tensors and plain types
    )
    torch.save(trainer.lightning_module.state_dict(), Path(root) / "final.pt")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print("READY", flush=True)
    {"cv": cross_validation, "fit": fit}[sys.argv[1]](sys.argv[2])
    print("DONE", flush=True)
