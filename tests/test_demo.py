"""The shipped digits task: reproducible, stratified, leak-free, with clear errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from epochkit.demo import DigitsClassifier, DigitsDataModule, load_digits_tensors


def _split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(seed=seed)
    dm.setup("fit")
    return dm.train_set.tensors[1], dm.val_set.tensors[0]


def test_split_is_reproducible_and_seed_dependent() -> None:
    y_a, xv_a = _split(0)
    y_b, xv_b = _split(0)
    _, xv_c = _split(1)
    assert torch.equal(y_a, y_b) and torch.equal(xv_a, xv_b)
    assert not torch.equal(xv_a, xv_c)


def test_split_is_stratified_and_standardised_on_train_only() -> None:
    dm = DigitsDataModule(val_fraction=0.2, seed=0)
    dm.setup("fit")
    _, y_all = load_digits_tensors()
    x_train, y_train = dm.train_set.tensors
    _, y_val = dm.val_set.tensors
    assert len(y_train) + len(y_val) == len(y_all)
    full = torch.bincount(y_all, minlength=10).float() / len(y_all)
    val = torch.bincount(y_val, minlength=10).float() / len(y_val)
    assert (full - val).abs().max() < 0.01
    # Columns with variance are standardised with the training split's own statistics.
    varying = x_train.std(dim=0) > 1e-3
    assert torch.allclose(x_train.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x_train.std(dim=0)[varying], torch.ones(int(varying.sum())), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "`batch_size` must be a positive int, got 0"),
        ({"val_fraction": 1.0}, r"`val_fraction` must lie in \(0, 1\), got 1.0"),
        ({"num_workers": -1}, "`num_workers` must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_classifier_learns_with_a_real_trainer(tmp_path) -> None:
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert float(trainer.callback_metrics["val_acc"]) > 0.85
    assert {"train_loss_epoch", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
