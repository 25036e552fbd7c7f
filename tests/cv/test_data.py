"""The fold loaders keep the user's loader settings; validation never shuffles; the dataset must be findable."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset, WeightedRandomSampler

from epochkit.cv.data import FoldDataModule, find_labels, find_training_dataset
from tests.helpers import DigitsDataModule


def _collate(batch: list[Any]) -> dict[str, torch.Tensor]:
    xs, ys = zip(*batch, strict=True)
    return {"x": torch.stack(xs), "y": torch.stack(ys)}


class _Custom(pl.LightningDataModule):
    def setup(self, stage: str) -> None:
        self.train_dataset = TensorDataset(torch.randn(20, 3), torch.arange(20) % 2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=3, shuffle=True, drop_last=True, collate_fn=_collate)


def test_fold_loaders_keep_the_users_settings_and_validation_never_shuffles() -> None:
    dm = _Custom()
    dm.setup("fit")
    fold = FoldDataModule(dm, find_training_dataset(dm), np.arange(0, 14), np.arange(14, 20))
    train, val, pred = fold.train_dataloader(), fold.val_dataloader(), fold.predict_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.batch_size == 3 and train.drop_last
    assert train.collate_fn is _collate and val.collate_fn is _collate
    for loader in (val, pred):
        assert isinstance(loader.sampler, SequentialSampler) and not loader.drop_last
    assert list(train.dataset.indices) == list(range(14)) and list(val.dataset.indices) == list(range(14, 20))
    batches = list(val)
    assert [len(b["y"]) for b in batches] == [3, 3]
    assert torch.equal(torch.cat([b["x"] for b in batches]), dm.train_dataset.tensors[0][14:])


def test_the_users_val_loader_settings_are_used_for_validation() -> None:
    dm = DigitsDataModule(batch_size=17)
    dm.setup("fit")
    fold = FoldDataModule(dm, dm.train_set, np.arange(100), np.arange(100, 150))
    assert fold.val_dataloader().batch_size == 17
    assert fold.batch_size == 17  # other attributes come from the user's DataModule


def test_a_custom_sampler_asks_for_cv_dataloader() -> None:
    class Weighted(_Custom):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_dataset, sampler=WeightedRandomSampler(torch.ones(20), 20), batch_size=2)

    dm = Weighted()
    dm.setup("fit")
    fold = FoldDataModule(dm, dm.train_dataset, np.arange(10), np.arange(10, 20))
    with pytest.raises(ValueError, match=r"WeightedRandomSampler.*cv_dataloader"):
        fold.train_dataloader()


def test_missing_dataset_and_labels() -> None:
    class NoData(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.zeros(4)))

    with pytest.raises(ValueError, match=r"cannot find the training dataset of NoData.*cv_dataset\(\)"):
        find_training_dataset(NoData())
    assert find_labels(TensorDataset(torch.zeros(4, 2), torch.zeros(4, 2))) is None
    dm = _Custom()
    dm.setup("fit")
    assert find_labels(dm.train_dataset).tolist() == [i % 2 for i in range(20)]
