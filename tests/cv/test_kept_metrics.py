"""A fold's ``kept`` metrics are those of the weights it keeps: taken from the fit's last validation when the kept
weights are exactly the ones it validated (no second validation), measured again when anything changed them after
that validation, even through ``.data`` (as weight-averaging callbacks write), which no version counter sees."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from epochkit import CrossValidator
from epochkit.cv.data import FoldDataModule, find_training_dataset
from tests.helpers import QUIET, DigitsClassifier, DigitsDataModule, quiet_trainer


class _HalveWeightsAtTrainEnd(Callback):
    """Changes the weights after the last validation the way Lightning's ``WeightAveraging`` does: through ``.data``."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for p in pl_module.parameters():
            p.data.mul_(0.5)


def _validate_saved(result: object, dm: DigitsDataModule, root: Path) -> list[dict[str, float]]:
    """Each fold's saved ``model.pt`` validated from scratch on the fold's validation samples."""
    manifest = json.loads((root / "cv_manifest.json").read_text())
    dataset = find_training_dataset(dm)
    out = []
    for fold in result.folds:  # type: ignore[attr-defined]
        model = DigitsClassifier(hidden=32)
        model.load_state_dict(torch.load(fold.model_path, weights_only=True))
        split = manifest["folds"][fold.fold]
        data = FoldDataModule(
            dm, dataset, torch.as_tensor(split["train"]).numpy(), torch.as_tensor(split["val"]).numpy()
        )
        (metrics,) = quiet_trainer(root / f"check{fold.fold}").validate(model, datamodule=data, verbose=False)
        out.append({k: float(v) for k, v in metrics.items()})
    return out


@pytest.mark.parametrize("changed_after_validation", [False, True])
def test_kept_metrics_are_those_of_the_saved_weights(tmp_path: Path, changed_after_validation: bool) -> None:
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=100)
    callbacks = [_HalveWeightsAtTrainEnd()] if changed_after_validation else []
    kwargs = {**QUIET, "max_epochs": 2, "limit_train_batches": 3, "callbacks": callbacks}
    result = CrossValidator(2, seed=1, root_dir=tmp_path, verbose=False, predict=False, resume_checkpoints=False).fit(
        DigitsClassifier(hidden=32), dm, kwargs
    )
    for fold, measured in zip(result.folds, _validate_saved(result, dm, tmp_path), strict=True):
        assert fold.kept.keys() == measured.keys() == {"val_loss", "val_acc"}
        assert fold.kept == pytest.approx(measured, rel=1e-6)
        last_validation = {k: fold.history[-1]["metrics"][k] for k in measured}
        if changed_after_validation:
            assert fold.kept["val_loss"] != pytest.approx(last_validation["val_loss"], rel=1e-3)
        else:  # the fit's last validation, taken as it was (not measured a second time)
            assert fold.kept == last_validation
