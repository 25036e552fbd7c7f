"""The whole cross-validation on 2 CPU processes (``ddp_spawn``): folds run, results come back, and out-of-fold
predictions cover every sample once, in dataset order, although each rank predicted only its share."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from epochkit import CrossValidator
from epochkit.cv import weights_checksum
from tests.helpers import RegressionDataModule, RegressionModule, read_tensorboard
from tests.helpers.processes import run_script

pytestmark = pytest.mark.ddp  # every test here starts DDP processes


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
    assert all(len(f.history) == 2 and "val_loss" in f.last for f in result.folds)
    assert np.array_equal(result.oof_index, np.arange(30))
    x = data.train_set.tensors[0]
    manifest = json.loads((tmp_path / "cv_manifest.json").read_text())
    for k, fold in enumerate(manifest["folds"]):
        member = RegressionModule()
        member.load_state_dict(torch.load(result.folds[k].model_path))
        with torch.no_grad():
            torch.testing.assert_close(result.oof_predictions[fold["val"]], member(x[fold["val"]]))
    # The kept model (no restore: the last epoch's weights) validated once more, in a second launch of the processes.
    assert all(f.kept_epoch == 1 and f.kept["val_loss"] == pytest.approx(f.last["val_loss"]) for f in result.folds)
    checksum = read_tensorboard(tmp_path / "fold_1").text_values("cv/weights_checksum")
    assert checksum == [f"fold 1: `{initial}` (verified on every rank)"]
    assert len(read_tensorboard(tmp_path / "summary").scalar_values("cv/val_loss_mean")) == 2


SCRIPT = """
import sys
import torch
from epochkit import CrossValidator
from tests.helpers import RegressionDataModule, RegressionModule

if __name__ == "__main__":
    torch.manual_seed(0)
    result = CrossValidator(2, root_dir=sys.argv[1], verbose=False).fit(
        RegressionModule(),
        RegressionDataModule(num_samples=30, batch_size=4),
        trainer_kwargs={"strategy": "ddp", "accelerator": "cpu", "devices": 2, "max_epochs": 1,
                        "enable_progress_bar": False, "enable_model_summary": False},
    )
    oof = None if result.oof_index is None else result.oof_index.tolist()
    kept = all(f.kept_epoch == 0 and "val_loss" in f.kept for f in result.folds)
    print("RESULT", result.folds[0].n_val + result.folds[1].n_val, oof == list(range(30)), kept, flush=True)
"""


def test_cv_script_under_ddp(tmp_path: Path) -> None:
    """The README's script form: started once, Lightning re-launches it for rank 1, both ranks run the folds."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    # The repository for `tests.helpers`, before whatever this test process imports epochkit from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    env.pop("LOCAL_RANK", None)
    proc = run_script([sys.executable, str(script), str(tmp_path / "cv")], env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Rank 0 merged complete, ordered out-of-fold predictions; rank 1 ran the same folds and returned too.
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert lines == ["RESULT 30 False True", "RESULT 30 True True"], proc.stdout
    saved = torch.load(tmp_path / "cv" / "oof_predictions.pt", weights_only=True)
    assert torch.equal(saved["index"], torch.arange(30)) and saved["predictions"].shape == (30, 2)
    assert json.loads((tmp_path / "cv" / "cv_results.json").read_text())["folds_done"] == [0, 1]
