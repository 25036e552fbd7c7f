"""How a fold's ``trainer_kwargs`` map onto ``RayExecutor``'s resources: completed where they agree, an error naming
both before anything runs (no Ray started, nothing written) where they disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from epochkit import CrossValidator
from epochkit.cv import RayExecutor
from tests.helpers import RegressionDataModule, RegressionModule


@pytest.mark.parametrize(
    ("resources", "kwargs", "expected"),
    [
        ({}, {}, {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}),
        ({"cpus_per_fold": 2}, {"devices": 2, "strategy": "ddp_spawn"}, {"accelerator": "cpu", "devices": 2}),
        ({"gpus_per_fold": 2}, {"strategy": "ddp_spawn"}, {"accelerator": "gpu", "devices": 2}),
        ({"gpus_per_fold": 0.5}, {"accelerator": "gpu"}, {"accelerator": "gpu", "devices": 1}),
        (
            {"gpus_per_fold": 1},
            {"devices": -1, "enable_progress_bar": True},
            {"devices": 1, "enable_progress_bar": True},
        ),
    ],
)
def test_agreeing_settings_are_completed(
    resources: dict[str, Any], kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    completed = RayExecutor(**resources).fold_trainer_kwargs({"max_epochs": 1, **kwargs})
    assert completed["max_epochs"] == 1
    assert {k: completed[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("resources", "kwargs", "message"),
    [
        (
            {"gpus_per_fold": 1},
            {"accelerator": "cpu"},
            r"accelerator='cpu': the fold reserves 1 GPU\(s\) but would not",
        ),
        ({}, {"accelerator": "gpu"}, r"accelerator='gpu': the fold reserves no GPU \(gpus_per_fold=0\)"),
        ({"gpus_per_fold": 2}, {"devices": 1}, r"devices=1: each fold trains on the 2 GPU\(s\) its task reserves"),
        ({"cpus_per_fold": 1}, {"devices": 2}, r"devices=2: on the CPU a fold runs 2 processes.*cpus_per_fold >= 2"),
        ({"gpus_per_fold": 2}, {"strategy": "ddp"}, r"strategy='ddp': several processes per fold need .*ddp_spawn"),
        ({}, {"num_nodes": 2}, r"num_nodes=2: one fold runs on one node .*Ray Train's TorchTrainer"),
        ({}, {"devices": [0, 1]}, r"devices=\[0, 1\]: give a number of devices"),
    ],
)
def test_disagreeing_settings_fail_before_anything_runs(
    resources: dict[str, Any], kwargs: dict[str, Any], message: str, tmp_path: Path
) -> None:
    executor = RayExecutor(**resources)
    with pytest.raises(ValueError, match=message) as info:
        CrossValidator(2, root_dir=tmp_path / "cv", executor=executor).fit(
            RegressionModule(), RegressionDataModule(), trainer_kwargs={"max_epochs": 1, **kwargs}
        )
    assert repr(executor) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, and no Ray was started (it would need root_dir)
