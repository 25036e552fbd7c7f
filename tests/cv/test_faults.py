"""A full disk, a read-only root_dir and planted files: clear errors naming the file, nothing half-written, nothing
run that epochkit did not write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from epochkit import CrossValidator
from epochkit._io import UnsafeFileError, WriteError
from epochkit.cv.integrity import RootDirError
from tests.cv.test_validator import _factory
from tests.helpers import QUIET, RegressionDataModule, RegressionModule
from tests.helpers.faults import fail_writes_with_enospc, read_only_command
from tests.test_io import plant

REPO = Path(__file__).resolve().parents[2]
KWARGS: dict[str, Any] = {**QUIET, "max_epochs": 1}


def _cv(root: Path) -> CrossValidator:
    return CrossValidator(2, root_dir=root, verbose=False)


def _fit(root: Path, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    return _cv(root).fit(RegressionModule(), RegressionDataModule(num_samples=16, batch_size=4), **kwargs)


def test_a_full_disk_during_the_results_write_leaves_no_half_file_and_the_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = fail_writes_with_enospc(monkeypatch, "cv_results.json")
    with pytest.raises(WriteError, match=r"could not write .*cv_results\.json: No space left on device"):
        _fit(tmp_path / "cv", trainer_kwargs=KWARGS)
    assert failed == [tmp_path / "cv" / "cv_results.json"]
    assert not (tmp_path / "cv" / "cv_results.json").exists()
    assert not [p for p in (tmp_path / "cv").rglob(".*") if p.is_file()], "a temporary file was left behind"
    monkeypatch.undo()
    resumed, clean = _fit(tmp_path / "cv", trainer_kwargs=KWARGS), _fit(tmp_path / "clean", trainer_kwargs=KWARGS)
    assert [(f.last, f.kept) for f in resumed.folds] == [(f.last, f.kept) for f in clean.folds]
    assert json.loads((tmp_path / "cv" / "cv_results.json").read_text())["folds_done"] == [0, 1]


def test_a_read_only_root_dir_fails_before_training_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "readonly"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    argv = [sys.executable, "-m", "tests.faults.runs", "cv", str(root)]
    proc = subprocess.run(
        read_only_command(root, argv), env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert f"CrossValidator root_dir {root} is not writable: Read-only file system" in proc.stderr or (
        os.geteuid() != 0 and f"CrossValidator root_dir {root} is not writable: Permission denied" in proc.stderr
    ), proc.stderr[-2000:]
    assert "EPOCH" not in proc.stdout  # nothing was trained
    assert list(root.iterdir()) == []


def test_a_planted_resume_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    data = RegressionDataModule(num_samples=24, batch_size=4)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="boom in fold 1"):
        CrossValidator(3, root_dir=tmp_path / "cv", verbose=False).fit(
            RegressionModule(), data, trainer_factory=_factory(fail_in_fold=1)
        )
    resume = tmp_path / "cv" / "fold_1" / "resume" / "last.ckpt"
    assert resume.exists()
    plant(resume, tmp_path / "MARKER")
    torch.manual_seed(0)
    with pytest.raises(UnsafeFileError, match=r"refusing to load the resume checkpoint .*fold_1/resume/last\.ckpt"):
        CrossValidator(3, root_dir=tmp_path / "cv", verbose=False).fit(
            RegressionModule(), data, trainer_factory=_factory(None)
        )
    assert not (tmp_path / "MARKER").exists()


def test_planted_prediction_and_weight_files_are_refused_and_run_nothing(tmp_path: Path) -> None:
    result = _fit(tmp_path / "cv", trainer_kwargs=KWARGS)
    marker = tmp_path / "MARKER"
    plant(tmp_path / "cv" / "fold_0" / "model.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"refusing to load the fold checkpoint .*fold_0/model\.pt"):
        result.ensemble()
    plant(tmp_path / "cv" / "fold_1" / "oof.pt", marker)
    # Every fold is done: the rerun checks each finished fold's files against its record before it reads them.
    with pytest.raises(RootDirError, match=r"fold_0/model\.pt is not the file .*fold_0/fold_result\.json recorded"):
        _fit(tmp_path / "cv", trainer_kwargs=KWARGS)
    assert not marker.exists()


def test_a_best_checkpoint_of_lightnings_own_loads_safely_for_the_ensemble(tmp_path: Path) -> None:
    kwargs = {**KWARGS, "enable_checkpointing": True}
    result = _fit(tmp_path / "cv", trainer_kwargs=kwargs)
    assert all(f.best_model_path for f in result.folds)
    ensemble = result.ensemble(weights="best")
    assert isinstance(ensemble, torch.nn.Module)
