"""CrossValidator.refit with a real Trainer: E epochs on every sample, E from the folds, bit-identical to a plain fit
from the same start, seed and data; files, the printed line, a skipping rerun and a SIGKILLed refit that resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from epochkit import CrossValidator, EarlyStopping, LRWarmup
from epochkit.cv import weights_checksum
from tests.cv.refit_runs import REFIT_EPOCHS
from tests.cv.refit_runs import run as refit_run
from tests.helpers import QUIET, RegressionDataModule, RegressionModule, read_tensorboard

REPO = Path(__file__).resolve().parents[2]


class _SeenRows(Callback):
    """Saves every training batch's inputs of the refit's fit to ``default_root_dir/seen.pt``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.rows.append(batch[0].clone())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(torch.cat(self.rows), Path(trainer.default_root_dir) / "seen.pt")


def _kwargs() -> dict[str, Any]:
    return {
        **QUIET,
        "logger": True,
        "enable_checkpointing": True,
        "log_every_n_steps": 1,
        "max_epochs": 4,
        "callbacks": [
            EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True),
            ModelCheckpoint(monitor="val_loss"),
            LRWarmup(fraction=0.5),  # half of the run's steps: the folds' run, then the refit's
            _SeenRows(),
        ],
    }


def test_refit_trains_the_folds_epochs_on_every_sample_as_a_plain_fit_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = RegressionDataModule(num_samples=30, batch_size=4, shuffle=True)
    torch.manual_seed(0)
    model = RegressionModule(lr=0.2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cv = CrossValidator(3, seed=7, root_dir=tmp_path / "cv")
    cv.fit(model, data, trainer_kwargs=_kwargs())
    capsys.readouterr()
    result = cv.refit(model, data)
    out = capsys.readouterr().out

    folds = [json.loads((tmp_path / "cv" / f"fold_{k}" / "fold_result.json").read_text()) for k in range(3)]
    counts = [fold["kept_epoch"] + 1 for fold in folds]
    assert result.fold_epochs == counts and result.rule == "kept"
    epochs = math.ceil(float(np.median(counts)))
    assert result.epochs == epochs and result.n_samples == 30 and result.seed == 7

    # Every sample, each `epochs` times (the refit saw the rows of the whole training set).
    seen = torch.load(tmp_path / "cv" / "final" / "seen.pt")
    data.setup("fit")
    everything = data.train_set.tensors[0]
    assert seen.shape[0] == epochs * 30
    expected = everything.repeat(epochs, 1)
    assert torch.equal(seen[seen[:, 0].argsort()], expected[expected[:, 0].argsort()])

    # Bit-identical to a plain fit of `epochs` epochs, from the same start, seed and data, without validation, with
    # the warmup over half of *its* steps.
    plain = RegressionModule(lr=0.2)
    plain.load_state_dict(start)
    pl.seed_everything(7, workers=True, verbose=False)
    trainer = pl.Trainer(**QUIET, max_epochs=epochs, limit_val_batches=0, callbacks=[LRWarmup(fraction=0.5)])
    trainer.fit(plain, data)
    final = torch.load(tmp_path / "cv" / "final" / "model.pt")
    torch.testing.assert_close(final, plain.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict(), plain.state_dict(), rtol=0, atol=0)  # the model holds them

    record = json.loads((tmp_path / "cv" / "final" / "refit.json").read_text())
    assert (record["epochs"], record["fold_epochs"], record["seed"], record["n_samples"]) == (epochs, counts, 7, 30)
    assert set(record["estimate"]) == {"val_loss"}
    assert record["estimate"]["val_loss"]["mean"] == pytest.approx(np.mean([f["kept"]["val_loss"] for f in folds]))
    lines = out.splitlines()
    assert "refit: EarlyStopping(monitor='val_loss') left out: the refit has no validation data to stop on" in lines
    assert "refit: ModelCheckpoint(monitor='val_loss') left out: the refit has no validation data to monitor" in lines
    assert lines[-1] == result.line()
    assert lines[-1].startswith(f"final model: {epochs} epochs (median of the folds' kept epochs ")
    assert "on 30 samples; CV estimate val_loss " in lines[-1]
    run = read_tensorboard(tmp_path / "cv" / "final")
    assert [step for step, _ in run.scalars["epoch"]][-1] >= 0 and "val_loss" not in run.scalars
    assert len(run.scalar_values("train_loss_epoch")) == epochs
    factors = run.scalars["warmup/factor"]  # over half of the refit's steps (8 per epoch), not of a fold's (5)
    assert next(step for step, factor in factors if factor == 1.0) + 1 == round(0.5 * epochs * 8)

    # A rerun (a new CrossValidator, another process's view) skips the folds and the refit, loading its weights.
    stamp = (tmp_path / "cv" / "final" / "refit.json").stat().st_mtime_ns
    torch.manual_seed(0)
    again = RegressionModule(lr=0.2)
    rerun = CrossValidator(3, seed=7, root_dir=tmp_path / "cv", verbose=False)
    rerun.fit(again, data, trainer_kwargs=_kwargs())
    skipped = rerun.refit(again, data)
    assert skipped.skipped and skipped.epochs == epochs
    assert (tmp_path / "cv" / "final" / "refit.json").stat().st_mtime_ns == stamp
    torch.testing.assert_close(again.state_dict(), plain.state_dict(), rtol=0, atol=0)

    # Another epoch count is another refit: redone, not skipped.
    again.load_state_dict(start)
    other = rerun.refit(again, data, epochs=1)
    assert not other.skipped and other.rule == "given" and other.epochs == 1


def test_best_rule_follows_the_monitored_metric_and_bad_epochs_fail(tmp_path: Path) -> None:
    data = RegressionDataModule(num_samples=24, batch_size=4)
    torch.manual_seed(0)
    model = RegressionModule()
    cv = CrossValidator(2, root_dir=tmp_path / "cv", verbose=False)
    result = cv.fit(model, data, trainer_kwargs=_kwargs())
    best = cv.refit(model, data, epochs="best")
    assert best.fold_epochs == [f.best_epoch["val_loss"] + 1 for f in result.folds] and best.monitor == "val_loss"
    with pytest.raises(ValueError, match=r"refit\(epochs='last'\): must be 'kept', 'best' or an int >= 1"):
        cv.refit(model, data, epochs="last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"refit\(epochs=0\): must be 'kept', 'best' or an int >= 1"):
        cv.refit(model, data, epochs=0)
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="the refit must start where the folds did"):
        cv.refit(RegressionModule(), data)
    with pytest.raises(ValueError, match="none ran here"):
        CrossValidator(2, root_dir=tmp_path / "cv", verbose=False).refit(model, data)
    with pytest.raises(ValueError, match=r"cv3 holds no cross-validation of these folds \(.*is missing\)"):
        CrossValidator(3, root_dir=tmp_path / "cv3", verbose=False).refit(model, data, trainer_kwargs=QUIET)
    (tmp_path / "cv" / "fold_1" / "fold_result.json").unlink()
    with pytest.raises(ValueError, match=r"fold 1 of the cross-validation in .* has not finished; run `fit` first"):
        cv.refit(model, data, epochs=2)


@pytest.mark.processes
@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_a_refit_killed_mid_way_resumes_to_the_same_weights(tmp_path: Path, sig: str) -> None:
    root = tmp_path / "cv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    argv = [sys.executable, "-m", "tests.cv.refit_runs", str(root)]
    killed = subprocess.run([*argv, "2", sig], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = killed.stdout + killed.stderr
    if sig == "KILL":
        assert killed.returncode == -9, out
    else:  # a preemption: exit status 143 (not Lightning's 0) and the line that says what to do
        assert killed.returncode == 143, out
        assert (
            f"CrossValidator: the refit was interrupted by SIGTERM; its last finished epoch is saved in "
            f"{root / 'final' / 'resume'}. Run the same refit again with root_dir={str(root)!r} to resume it" in out
        ), out
        assert "Traceback" not in out and "REFIT EPOCH 3" not in out, out
    assert "REFIT EPOCH 1" in killed.stdout and "DONE" not in killed.stdout
    assert (root / "final" / "resume" / "last.ckpt").exists() and not (root / "final" / "refit.json").exists()

    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0 and "DONE" in resumed.stdout, resumed.stdout + resumed.stderr
    epochs = [line for line in resumed.stdout.splitlines() if line.startswith("REFIT EPOCH")]
    assert epochs == [f"REFIT EPOCH {e}" for e in range(2, REFIT_EPOCHS)]  # resumed, not started over

    refit_run(str(tmp_path / "clean"), None)
    torch.testing.assert_close(
        torch.load(root / "final" / "model.pt"), torch.load(tmp_path / "clean" / "final" / "model.pt"), rtol=0, atol=0
    )
    assert weights_checksum(RegressionModule()) != json.loads((root / "final" / "refit.json").read_text())["weights"]
