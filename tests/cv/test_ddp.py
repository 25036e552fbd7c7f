"""The whole cross-validation on 2 CPU processes (``ddp_spawn``): folds run, results come back, and out-of-fold
predictions cover every sample once, in dataset order, although each rank predicted only its share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from epochkit import CrossValidator
from epochkit.cv import weights_checksum
from tests.helpers import RegressionDataModule, RegressionModule, read_tensorboard


def test_cv_under_ddp_spawn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RegressionModule()
    initial = weights_checksum(model)
    data = RegressionDataModule(num_samples=30, batch_size=4)  # validation folds of 15: uneven over 2 ranks
    result = CrossValidator(2, root_dir=tmp_path, verbose=False).fit(
        model,
        data,
        trainer_kwargs={
            "strategy": "ddp_spawn",
            "accelerator": "cpu",
            "devices": 2,
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    )
    assert [f.weights_checksum for f in result.folds] == [initial, initial]
    assert all(len(f.history) == 2 and "val_loss" in f.final for f in result.folds)
    assert np.array_equal(result.oof_index, np.arange(30))
    x = data.train_set.tensors[0]
    manifest = json.loads((tmp_path / "cv_manifest.json").read_text())
    for k, fold in enumerate(manifest["folds"]):
        member = RegressionModule()
        member.load_state_dict(torch.load(result.folds[k].model_path))
        with torch.no_grad():
            torch.testing.assert_close(result.oof_predictions[fold["val"]], member(x[fold["val"]]))
    assert read_tensorboard(tmp_path / "fold_1").text_values("cv/weights_checksum") == [f"fold 1: `{initial}`"]
    assert len(read_tensorboard(tmp_path / "summary").scalar_values("cv/val_loss_mean")) == 2
