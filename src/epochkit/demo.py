"""A small, download-free classification task for examples, tests and quick experiments.

scikit-learn ships the 8x8 handwritten digits (1797 images, 10 classes) inside its wheel, so this task needs no
network. :class:`DigitsDataModule` splits it reproducibly (stratified, seeded) and standardises the pixels with
statistics of the training split only; :class:`DigitsClassifier` is a small MLP that reaches about 0.95 validation
accuracy in a few seconds on a CPU.

Example:
    >>> dm = DigitsDataModule(batch_size=32, seed=0)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), x.dtype, tuple(y.shape), y.dtype
    ((32, 64), torch.float32, (32,), torch.int64)
    >>> len(dm.train_set) + len(dm.val_set)
    1797
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from epochkit._validation import check_int, check_number

NUM_FEATURES = 64
NUM_CLASSES = 10


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the digits images as a float32 ``(1797, 64)`` tensor and the labels as an int64 ``(1797,)`` tensor.

    Example:
        >>> x, y = load_digits_tensors()
        >>> tuple(x.shape), int(y.max()) + 1
        ((1797, 64), 10)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.as_tensor(bunch.data, dtype=torch.float32), torch.as_tensor(bunch.target, dtype=torch.int64)


class DigitsDataModule(pl.LightningDataModule):
    """The digits dataset split into train and validation sets, batches of ``(x, y)``.

    Args:
        batch_size: Samples per batch for both loaders.
        val_fraction: Share of the samples held out for validation, stratified by label, in ``(0, 1)``.
        seed: Seed of the split. The same seed gives the same split on every machine and rank.
        shuffle: Whether the training loader reshuffles every epoch.
        num_workers: Worker processes per loader.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must lie in (0, 1), got {val_fraction!r}.")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        from sklearn.model_selection import train_test_split

        x, y = load_digits_tensors()
        train_idx, val_idx = train_test_split(
            torch.arange(len(y)).numpy(), test_size=self.val_fraction, random_state=self.seed, stratify=y.numpy()
        )
        train_idx_t, val_idx_t = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        # Standardise with the training split's statistics only, so nothing leaks from the held-out validation split.
        # Under CrossValidator the folds split this training set, so every validation fold's samples are in these
        # statistics: a small leak, accepted for the demo (see the README's "Cross-validation" section).
        mean = x[train_idx_t].mean(dim=0)
        # A pixel constant on the training split keeps its scale (std 1, not 1e-6): set in a validation image it
        # would otherwise land 1e6 standard deviations out and make val_loss meaningless (early stopping on it).
        std = x[train_idx_t].std(dim=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        x = (x - mean) / std
        self.train_set = TensorDataset(x[train_idx_t], y[train_idx_t])
        self.val_set = TensorDataset(x[val_idx_t], y[val_idx_t])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=self.shuffle, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


class DigitsClassifier(pl.LightningModule):
    """A two-layer MLP for the digits task; logs ``train_loss``, ``val_loss`` and ``val_acc``.

    Args:
        hidden: Width of the hidden layer.
        lr: Adam's learning rate.
        dropout: Dropout probability after the hidden layer.
    """

    def __init__(self, hidden: int = 128, lr: float = 3e-3, dropout: float = 0.1) -> None:
        check_int("DigitsClassifier", "hidden", hidden, minimum=1)
        check_number("DigitsClassifier", "lr", lr, above=0.0)
        check_number("DigitsClassifier", "dropout", dropout, minimum=0.0, below=1.0)
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES)
        )
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Class probabilities, one row per sample (what cross-validation's out-of-fold predictions hold)."""
        return self(batch[0]).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
