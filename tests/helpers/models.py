"""Models and datamodules that tests train with a real Trainer.

The digits classifier is the one shipped in :mod:`epochkit.demo` (real data, a real accuracy); the regression pair is
a BoringModel-style module on seeded random data, for tests that need something tiny and fast.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from epochkit.demo import DigitsClassifier, DigitsDataModule

__all__ = ["DigitsClassifier", "DigitsDataModule", "RegressionDataModule", "RegressionModule"]


class RegressionDataModule(pl.LightningDataModule):
    """Seeded random regression data, ``y = x @ w + noise``; batches of ``(x, y)``."""

    def __init__(
        self,
        num_samples: int = 64,
        in_features: int = 8,
        out_features: int = 2,
        batch_size: int = 8,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.in_features = in_features
        self.out_features = out_features
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle

    def setup(self, stage: str) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        n = self.num_samples
        x = torch.randn(2 * n, self.in_features, generator=gen)
        w = torch.randn(self.in_features, self.out_features, generator=gen)
        y = x @ w + 0.1 * torch.randn(2 * n, self.out_features, generator=gen)
        self.train_set = TensorDataset(x[:n], y[:n])
        self.val_set = TensorDataset(x[n:], y[n:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class RegressionModule(pl.LightningModule):
    """A linear layer trained with SGD on MSE; logs ``train_loss`` and ``val_loss``."""

    def __init__(self, in_features: int = 8, out_features: int = 2, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
