"""CrossValidator end to end with a real Trainer: the folds sklearn would make, everything reset and verified per
fold, results, out-of-fold predictions, TensorBoard output, resume after a failure, reruns and bad input."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from sklearn.model_selection import KFold, StratifiedKFold
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from epochkit import CrossValidator, DestroyProcessGroupAtExit
from epochkit.cv import weights_checksum
from tests.helpers import (
    QUIET,
    DigitsClassifier,
    DigitsDataModule,
    RegressionDataModule,
    RegressionModule,
    read_plugin_summaries,
    read_tensorboard,
)

# What a fold keeps of Lightning by default (a TensorBoard run, a ModelCheckpoint), on the shared quiet settings.
LOGGED: dict[str, Any] = {**QUIET, "logger": True, "enable_checkpointing": True}


class _Probe(Callback):
    """Writes what the fold's Trainer really starts with to ``default_root_dir/probe.json``."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        early = next(cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping))
        record = {
            "probe_id": id(self),
            "early_stopping_id": id(early),
            "early_stopping_wait": early.wait_count,
            "early_stopping_best": float(early.best_score),
            "optimizer_state_len": len(trainer.optimizers[0].state),
            "metric_updates": int(pl_module.val_acc._update_count),
            "checksum": weights_checksum(pl_module),
            "train_indices": list(trainer.train_dataloader.dataset.indices),
            "val_indices": list(trainer.val_dataloaders.dataset.indices),
            "val_sequential": isinstance(trainer.val_dataloaders.sampler, SequentialSampler),
            "train_batch_size": trainer.train_dataloader.batch_size,
        }
        (Path(trainer.default_root_dir) / "probe.json").write_text(json.dumps(record))


def test_digits_cv_resets_everything_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pl.seed_everything(0)
    model = DigitsClassifier(hidden=32)
    initial = weights_checksum(model)
    dm = DigitsDataModule(batch_size=100)
    cv = CrossValidator(3, stratify=True, seed=4, root_dir=tmp_path)
    callbacks = [
        _Probe(),
        EarlyStopping(monitor="val_loss", patience=5),
        ModelCheckpoint(monitor="val_acc", mode="max"),
    ]
    result = cv.fit(
        model, dm, trainer_kwargs={**LOGGED, "max_epochs": 2, "limit_train_batches": 3, "callbacks": callbacks}
    )

    # The folds trained and validated on are StratifiedKFold's with the same seed.
    labels = dm.train_set.tensors[1].numpy()
    expected = list(StratifiedKFold(3, shuffle=True, random_state=4).split(np.zeros(len(labels)), labels))
    probes = [json.loads((tmp_path / f"fold_{k}" / "probe.json").read_text()) for k in range(3)]
    for probe, (tr, va) in zip(probes, expected, strict=True):
        assert probe["train_indices"] == sorted(tr.tolist()) and probe["val_indices"] == sorted(va.tolist())
        assert probe["val_sequential"] and probe["train_batch_size"] == 100

    # Every fold starts from the same verified weights with fresh optimizer, metric and callback state.
    assert {p["checksum"] for p in probes} == {initial}
    assert [f.weights_checksum for f in result.folds] == [initial] * 3
    assert all(p["optimizer_state_len"] == 0 and p["metric_updates"] == 0 for p in probes)
    assert all(p["early_stopping_wait"] == 0 and p["early_stopping_best"] == math.inf for p in probes)
    assert len({p["probe_id"] for p in probes}) == 3 and len({p["early_stopping_id"] for p in probes}) == 3
    assert weights_checksum(model) == initial  # handed back as it came
    for k in range(3):
        run = read_tensorboard(tmp_path / f"fold_{k}")
        assert run.text_values("cv/weights_checksum") == [f"fold {k}: `{initial}` (verified on every rank)"]
        assert not [tag for tag in run.scalars if tag.startswith("cv/")]  # no one-point charts

    # Results: last, best and kept per fold, per-fold checkpoint directories, files written.
    for fold in result.folds:
        assert fold.last["val_acc"] == pytest.approx(fold.history[-1]["metrics"]["val_acc"])
        assert fold.kept_epoch == 1 and fold.kept["val_acc"] == pytest.approx(fold.last["val_acc"])  # no restore
        assert fold.best["val_acc"] == max(h["metrics"]["val_acc"] for h in fold.history)
        assert fold.best_model_path.startswith(str(tmp_path / f"fold_{fold.fold}" / "checkpoints"))
        assert fold.seconds["fit"] > 0 and len(fold.history) == 2
    saved = json.loads((tmp_path / "cv_results.json").read_text())
    accs = [f.last["val_acc"] for f in result.folds]
    assert saved["aggregate"]["last"]["val_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert saved["aggregate"]["last"]["val_acc"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert (tmp_path / "cv_results.csv").read_text().startswith("fold,n_train,n_val,last/")
    out = capsys.readouterr().out
    assert "val_acc (last)" in out and "val_acc (kept)" in out and "95% CI (t)" in out

    # Out-of-fold predictions: every sample once, in dataset order, from the model of the fold that held it out.
    assert np.array_equal(result.oof_index, np.arange(len(labels)))
    assert result.oof_predictions.shape == (len(labels), 10)
    x = dm.train_set.tensors[0]
    for k, (_, va) in enumerate(expected):
        member = DigitsClassifier(hidden=32)
        member.load_state_dict(torch.load(result.folds[k].model_path))
        with torch.no_grad():
            torch.testing.assert_close(result.oof_predictions[va], member.eval()(x[va]).softmax(-1))
    ensemble = result.ensemble(transform=lambda z: z.softmax(-1))
    assert ensemble(x[:4]).shape == (4, 10)

    # TensorBoard summary: per-epoch mean/std over folds, the layout and one hparams session per fold.
    summary = read_tensorboard(tmp_path / "summary")
    for epoch in range(2):
        values = [f.history[epoch]["metrics"]["val_acc"] for f in result.folds]
        assert summary.scalars["cv/val_acc_mean"][epoch] == (epoch, pytest.approx(np.mean(values), abs=1e-6))
        assert summary.scalars["cv/val_acc_std"][epoch] == (epoch, pytest.approx(np.std(values, ddof=1), abs=1e-6))
        std = np.std(values, ddof=1)
        assert summary.scalars["cv/val_acc_mean_plus_std"][epoch][1] == pytest.approx(np.mean(values) + std, abs=1e-6)
    for fold in result.folds:  # every fold's curve, by epoch, in the summary run itself
        expected = [(h["epoch"], pytest.approx(h["metrics"]["val_acc"], abs=1e-6)) for h in fold.history]
        assert summary.scalars[f"cv/val_acc/fold_{fold.fold}"] == expected
    (_, content), *_ = read_plugin_summaries(tmp_path / "summary", "custom_scalars")
    layout = layout_pb2.Layout.FromString(content)
    charts = {c.title: c for c in layout.category[0].chart}
    assert list(charts["val_acc: every fold"].multiline.tag) == ["^cv/val_acc/fold_[0-9]+$"]
    margin = charts["val_acc: mean +- std over folds"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == (
        "cv/val_acc_mean",
        "cv/val_acc_mean_minus_std",
        "cv/val_acc_mean_plus_std",
    )
    sessions = [
        plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info
        for t, c in read_plugin_summaries(tmp_path / "summary", "hparams")
        if t.endswith("session_start_info")
    ]
    assert sorted(s.hparams["fold"].number_value for s in sessions) == [0, 1, 2]
    assert summary.scalar_values("hparams/last_val_acc") == pytest.approx(accs)
    assert summary.scalar_values("hparams/val_acc") == pytest.approx([f.kept["val_acc"] for f in result.folds])


class _Boom(Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("boom in fold 1")


def _factory(fail_in_fold: int | None):
    def make(fold: int) -> pl.Trainer:
        callbacks = [_Boom()] if fold == fail_in_fold else []
        return pl.Trainer(**QUIET, max_epochs=3, callbacks=callbacks)

    return make


def _regression_cv(root: Path, **kwargs: Any) -> CrossValidator:
    return CrossValidator(kwargs.pop("n_splits", 3), root_dir=root, verbose=False, **kwargs)


@pytest.mark.parametrize("shuffle", [False, True])
def test_an_interrupted_cv_resumes_where_it_failed_and_equals_an_uninterrupted_one(
    tmp_path: Path, shuffle: bool
) -> None:
    # With a shuffling loader the resumed epochs must draw the orders the uninterrupted run drew: the resume
    # checkpoint carries the global RNG states.
    data = RegressionDataModule(num_samples=24, batch_size=4, shuffle=shuffle)
    torch.manual_seed(0)  # the same initial weights in all three runs
    with pytest.raises(RuntimeError, match="boom in fold 1"):
        _regression_cv(tmp_path / "cv").fit(RegressionModule(), data, trainer_factory=_factory(fail_in_fold=1))
    fold0 = tmp_path / "cv" / "fold_0" / "fold_result.json"
    before = (fold0.read_bytes(), fold0.stat().st_mtime_ns)
    assert not (tmp_path / "cv" / "fold_1" / "fold_result.json").exists()
    assert (tmp_path / "cv" / "fold_1" / "resume" / "last.ckpt").exists()

    torch.manual_seed(0)
    resumed = _regression_cv(tmp_path / "cv").fit(RegressionModule(), data, trainer_factory=_factory(None))
    torch.manual_seed(0)
    clean = _regression_cv(tmp_path / "clean").fit(RegressionModule(), data, trainer_factory=_factory(None))

    assert (fold0.read_bytes(), fold0.stat().st_mtime_ns) == before  # finished fold untouched
    assert resumed.folds[1].resumed_from.endswith("fold_1/resume/last.ckpt")
    assert resumed.folds[2].resumed_from is None
    assert [h["epoch"] for h in resumed.folds[1].history] == [0, 1, 2]
    for a, b in zip(resumed.folds, clean.folds, strict=True):
        assert a.last["val_loss"] == pytest.approx(b.last["val_loss"], rel=1e-6)
        assert a.kept["val_loss"] == pytest.approx(b.kept["val_loss"], rel=1e-6)
        torch.testing.assert_close(torch.load(a.model_path), torch.load(b.model_path), rtol=0, atol=0)
    torch.testing.assert_close(resumed.oof_predictions, clean.oof_predictions)


def test_factory_must_build_new_trainers(tmp_path: Path) -> None:
    shared = pl.Trainer(**QUIET, max_epochs=1)
    with pytest.raises(ValueError, match="objects an earlier fold used"):
        _regression_cv(tmp_path, n_splits=2).fit(
            RegressionModule(), RegressionDataModule(), trainer_factory=lambda k: shared
        )


def test_a_rerun_with_other_folds_fails_unless_overwrite(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 1}
    _regression_cv(tmp_path, n_splits=2, seed=0).fit(RegressionModule(), RegressionDataModule(), kwargs)
    first = json.loads((tmp_path / "cv_manifest.json").read_text())["hash"]
    with pytest.raises(ValueError, match=r"pins different folds.*`overwrite=True`"):
        _regression_cv(tmp_path, n_splits=2, seed=1).fit(RegressionModule(), RegressionDataModule(), kwargs)
    result = _regression_cv(tmp_path, n_splits=2, seed=1, overwrite=True).fit(
        RegressionModule(), RegressionDataModule(), kwargs
    )
    manifest = json.loads((tmp_path / "cv_manifest.json").read_text())
    assert manifest["hash"] == result.plan_hash != first
    expected = [sorted(v.tolist()) for _, v in KFold(2, shuffle=True, random_state=1).split(np.zeros(64))]
    assert [f["val"] for f in manifest["folds"]] == expected


class _NoDataset(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(8, 8), torch.zeros(8, 2)))


@pytest.mark.parametrize(
    ("cv_kwargs", "datamodule", "message"),
    [
        ({"n_splits": 100}, RegressionDataModule(), "`n_splits=100` is more than the 64 samples"),
        ({"stratify": True, "labels": [0] * 62 + [1] * 2}, RegressionDataModule(), r"class\(es\) \{1: 2\}"),
        ({"stratify": True}, RegressionDataModule(), "no labels were found"),
        ({"groups": list(range(10))}, RegressionDataModule(), "`groups` has 10 entries but .* 64 samples"),
        ({}, _NoDataset(), "cannot find the training dataset of _NoDataset"),
    ],
)
def test_bad_input_fails_before_any_training(tmp_path: Path, cv_kwargs, datamodule, message) -> None:
    cv = _regression_cv(tmp_path, **{"n_splits": 3, **cv_kwargs})
    with pytest.raises(ValueError, match=message):
        cv.fit(RegressionModule(), datamodule, {**LOGGED, "max_epochs": 1})
    assert not list(tmp_path.glob("fold_*"))


def test_reinit_gives_each_fold_its_own_seeded_start(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 1}
    runs = [
        _regression_cv(tmp_path / str(i), n_splits=2, reset="reinit", predict=False).fit(
            RegressionModule(), RegressionDataModule(), kwargs
        )
        for i in range(2)
    ]
    checksums = [[f.weights_checksum for f in run.folds] for run in runs]
    assert checksums[0] == checksums[1] and checksums[0][0] != checksums[0][1]

    class Uncovered(RegressionModule):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(1))

    with pytest.raises(RuntimeError, match=r"none covers \['temperature'\]"):
        _regression_cv(tmp_path / "bad", n_splits=2, reset="reinit").fit(Uncovered(), RegressionDataModule(), kwargs)
    assert not list((tmp_path / "bad").glob("fold_*"))


class _LazyTiedCompiled(RegressionModule):
    """A lazy first layer, then a compiled network with a pair of tied weights.

    Submodules, not the whole LightningModule, are compiled: Lightning's own whole-module compile fails at
    ``self.log`` under this torch (the same with a plain Trainer), and dynamo cannot trace a lazy layer's
    materialisation, so this is the supported form.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lazy = nn.LazyLinear(8)
        self.net = nn.Sequential(nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 2))
        self.mirror = nn.Linear(8, 8)
        self.mirror.weight = self.net[1].weight  # tied
        self.compiled = torch.compile(self.net, backend="eager")
        self.example_input_array = torch.zeros(1, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(self.lazy(x))


def test_compiled_lazy_and_tied_modules(tmp_path: Path) -> None:
    torch._dynamo.reset()  # no compiled state from other tests
    model = _LazyTiedCompiled()
    kwargs = {**QUIET, "max_epochs": 1}
    result = _regression_cv(tmp_path, n_splits=2).fit(model, RegressionDataModule(), kwargs)
    materialised = weights_checksum(model)  # after CrossValidator ran example_input_array through the lazy layer
    assert result.folds[0].weights_checksum == result.folds[1].weights_checksum == materialised
    assert model.mirror.weight is model.net[1].weight
    assert result.oof_predictions.shape == (64, 2)


class _BoomOnceInFold1(Callback):
    """Fails fold 1 in the middle of its third epoch, once (a marker file remembers), wherever it was copied."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        fold_1 = Path(trainer.default_root_dir).name == "fold_1"
        if fold_1 and trainer.current_epoch == 2 and args[-1] == 1 and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise RuntimeError("boom in fold 1")


def test_resume_with_trainer_kwargs_keeps_one_clean_tensorboard_history(tmp_path: Path) -> None:
    kwargs = {
        **LOGGED,
        "max_epochs": 3,
        "log_every_n_steps": 1,
        "callbacks": [_BoomOnceInFold1(str(tmp_path / "failed")), ModelCheckpoint(monitor="val_loss")],
    }
    data = RegressionDataModule(num_samples=24, batch_size=4)
    torch.manual_seed(0)  # a rerun must start from the same weights (checked)
    with pytest.raises(RuntimeError, match="boom in fold 1"):
        _regression_cv(tmp_path / "cv", n_splits=2).fit(RegressionModule(), data, kwargs)
    torch.manual_seed(0)
    result = _regression_cv(tmp_path / "cv", n_splits=2).fit(RegressionModule(), data, kwargs)
    assert result.folds[1].resumed_from is not None
    run = read_tensorboard(tmp_path / "cv" / "fold_1")
    steps = [step for step, _ in run.scalars["train_loss_step"]]
    assert steps == sorted(set(steps)) and len(steps) == 3 * 3  # 3 epochs of 3 steps, none logged twice
    assert [step for step, _ in run.scalars["val_loss"]] == [2, 5, 8]
    assert result.folds[1].best_model_path.startswith(str(tmp_path / "cv" / "fold_1" / "checkpoints"))


class _UnloggedMetric(RegressionModule):
    """Accumulates a torchmetrics metric it never logs, so only the CrossValidator's reset clears it."""

    def __init__(self) -> None:
        super().__init__()
        self.mse = torchmetrics.MeanSquaredError()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.mse.update(self(batch[0]), batch[1])


class _RecordAtStart(Callback):
    def __init__(self, seen: list[tuple[int, int]]) -> None:
        self.seen = seen

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append((int(pl_module.mse._update_count), len(trainer.optimizers[0].state)))


def test_metric_states_and_optimizer_start_empty_in_every_fold(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def make(fold: int) -> pl.Trainer:
        return pl.Trainer(**QUIET, max_epochs=1, callbacks=[_RecordAtStart(seen)])

    model = _UnloggedMetric()
    _regression_cv(tmp_path, n_splits=3, predict=False).fit(model, RegressionDataModule(), trainer_factory=make)
    assert seen == [(0, 0), (0, 0), (0, 0)]
    assert model.mse._update_count == 0  # handed back reset, as it came


def test_every_fold_trainer_destroys_its_process_group_at_exit(tmp_path: Path) -> None:
    # A fold's ddp_spawn workers exit right after it; without DestroyProcessGroupAtExit gloo may abort them (a flaky
    # abort is all a run would show), so every fold's Trainer must carry it, whatever callbacks the user gave.
    trainers: list[pl.Trainer] = []

    def make(fold: int) -> pl.Trainer:
        trainers.append(pl.Trainer(**QUIET, max_epochs=1))
        return trainers[-1]

    _regression_cv(tmp_path, n_splits=2, predict=False).fit(
        RegressionModule(), RegressionDataModule(), trainer_factory=make
    )
    assert len(trainers) == 2
    assert [sum(isinstance(cb, DestroyProcessGroupAtExit) for cb in t.callbacks) for t in trainers] == [1, 1]


class _PredictFailsOnce(RegressionModule):
    """``predict_step`` fails the first time it is called (after fold 0 trained all its epochs)."""

    failed = False

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not _PredictFailsOnce.failed:
            _PredictFailsOnce.failed = True
            raise RuntimeError("boom in predict")
        return super().predict_step(batch, batch_idx)


def test_a_fold_failing_after_its_last_epoch_resumes_with_its_final_metrics(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 2}
    data = RegressionDataModule(num_samples=24, batch_size=4, shuffle=False)
    _PredictFailsOnce.failed = False
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="boom in predict"):
        _regression_cv(tmp_path / "cv", n_splits=2).fit(_PredictFailsOnce(), data, kwargs)
    torch.manual_seed(0)
    resumed = _regression_cv(tmp_path / "cv", n_splits=2).fit(_PredictFailsOnce(), data, kwargs)
    torch.manual_seed(0)
    clean = _regression_cv(tmp_path / "clean", n_splits=2).fit(_PredictFailsOnce(), data, kwargs)

    assert resumed.folds[0].resumed_from is not None  # restored a checkpoint written after the last epoch
    for a, b in zip(resumed.folds, clean.folds, strict=True):
        assert set(a.last) == set(b.last) and "val_loss" in a.last
        assert a.last["val_loss"] == pytest.approx(b.last["val_loss"], rel=1e-6)
        assert a.kept == pytest.approx(b.kept, rel=1e-6) and a.kept_epoch == b.kept_epoch == 1
    assert resumed.aggregate()["last"]["val_loss"]["n"] == 2


class _LogsAtEpochEnd(RegressionModule):
    def on_train_epoch_end(self) -> None:
        self.log("epoch_end_metric", float(self.current_epoch) + 1.0)


def test_metrics_logged_in_the_modules_on_train_epoch_end_are_recorded_in_their_epoch(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 2}
    result = _regression_cv(tmp_path, n_splits=2, predict=False).fit(_LogsAtEpochEnd(), RegressionDataModule(), kwargs)
    for fold in result.folds:
        assert [h["metrics"].get("epoch_end_metric") for h in fold.history] == [1.0, 2.0]
        assert fold.last["epoch_end_metric"] == fold.best["epoch_end_metric"] == 2.0
        assert fold.best_epoch["epoch_end_metric"] == 1


def test_a_rerun_with_other_settings_or_another_model_fails_unless_overwrite(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 2}
    data = RegressionDataModule(num_samples=24, batch_size=4)
    torch.manual_seed(0)
    first = _regression_cv(tmp_path, n_splits=2, predict=False).fit(RegressionModule(), data, kwargs)

    torch.manual_seed(0)  # same starting weights, other hyperparameters
    with pytest.raises(ValueError, match=r"other settings.*hparams.*`overwrite=True`"):
        _regression_cv(tmp_path, n_splits=2, predict=False).fit(RegressionModule(lr=0.5), data, kwargs)
    torch.manual_seed(0)  # same model, other Trainer settings
    with pytest.raises(ValueError, match=r"other settings.*max_epochs"):
        _regression_cv(tmp_path, n_splits=2, predict=False).fit(RegressionModule(), data, {**kwargs, "max_epochs": 1})
    torch.manual_seed(1)  # same settings, other starting weights
    with pytest.raises(ValueError, match=r"trained from weights with checksum .* `overwrite=True`"):
        _regression_cv(tmp_path, n_splits=2, predict=False).fit(RegressionModule(), data, kwargs)

    torch.manual_seed(0)  # the same again: the finished folds are reused
    again = _regression_cv(tmp_path, n_splits=2, predict=False).fit(RegressionModule(), data, kwargs)
    assert [f.to_dict() for f in again.folds] == [f.to_dict() for f in first.folds]
    torch.manual_seed(1)
    redone = _regression_cv(tmp_path, n_splits=2, predict=False, overwrite=True).fit(
        RegressionModule(lr=0.5), data, {**kwargs, "max_epochs": 1}
    )
    assert redone.folds[0].weights_checksum != first.folds[0].weights_checksum
    assert [len(f.history) for f in redone.folds] == [1, 1]


def test_stratify_with_a_splitter_that_does_not_stratify_fails() -> None:
    with pytest.raises(ValueError, match=r"`stratify=True` with `splitter=KFold.*does not stratify"):
        CrossValidator(splitter=KFold(4), stratify=True)
    assert CrossValidator(splitter=StratifiedKFold(4), stratify=True).stratify


class _LogsNamedMetrics(RegressionModule):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        rising = float(self.current_epoch) + 1.0
        self.log_dict({"val_mape": rising, "val_kl": rising, "val_cancer_recall": rising, "val_concern_acc": rising})


def test_best_values_follow_the_whole_words_of_metric_names(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 2}
    cv = _regression_cv(tmp_path, n_splits=2, predict=False)
    result = cv.fit(_LogsNamedMetrics(), RegressionDataModule(), kwargs)
    for fold in result.folds:
        assert fold.best["val_mape"] == fold.best["val_kl"] == 1.0  # errors/divergences: the lowest is best
        assert fold.best["val_cancer_recall"] == fold.best["val_concern_acc"] == 2.0  # not "cer" / "err"


class _LazyTwoInputs(RegressionModule):
    """A lazy layer whose forward takes two inputs, given as a tuple or a dict ``example_input_array``."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.lazy = nn.LazyLinear(2)
        x, shift = torch.zeros(1, 8), torch.zeros(1, 2)
        self.example_input_array = {"x": x, "shift": shift} if as_dict else (x, shift)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        out = self.layer(x) + self.lazy(x)
        return out if shift is None else out + shift


@pytest.mark.parametrize("as_dict", [False, True])
def test_lazy_modules_materialise_with_a_tuple_or_dict_example_input(tmp_path: Path, as_dict: bool) -> None:
    kwargs = {**QUIET, "max_epochs": 1}
    model = _LazyTwoInputs(as_dict)
    result = _regression_cv(tmp_path, n_splits=2, predict=False).fit(model, RegressionDataModule(), kwargs)
    assert result.folds[0].weights_checksum == result.folds[1].weights_checksum == weights_checksum(model)
    assert model.lazy.weight.shape == (2, 8)


class _OwnLoaders(RegressionDataModule):
    """Builds the fold loaders itself, with a batch sampler (which CrossValidator cannot rebuild)."""

    def __init__(self, shuffle_predict: bool = False) -> None:
        super().__init__(num_samples=30)
        self.shuffle_predict = shuffle_predict

    def cv_dataloader(self, dataset: Any, stage: str) -> DataLoader:
        random = stage == "train" or (stage == "predict" and self.shuffle_predict)
        sampler = torch.utils.data.RandomSampler(dataset) if random else SequentialSampler(dataset)
        return DataLoader(dataset, batch_sampler=torch.utils.data.BatchSampler(sampler, 4, drop_last=False))


def test_out_of_fold_predictions_use_the_users_cv_dataloader_on_one_device(tmp_path: Path) -> None:
    kwargs = {**QUIET, "max_epochs": 1}
    data = _OwnLoaders()
    result = _regression_cv(tmp_path / "ok", n_splits=2).fit(RegressionModule(), data, kwargs)
    assert np.array_equal(result.oof_index, np.arange(30))
    x = data.train_set.tensors[0]
    for fold in result.folds:
        member = RegressionModule()
        member.load_state_dict(torch.load(fold.model_path))
        val = np.setdiff1d(
            np.arange(30), json.loads((tmp_path / "ok" / "cv_manifest.json").read_text())["folds"][fold.fold]["train"]
        )
        with torch.no_grad():
            torch.testing.assert_close(result.oof_predictions[val], member.eval()(x[val]))

    with pytest.raises(ValueError, match=r"visit every sample of the given dataset once, in order"):
        _regression_cv(tmp_path / "shuffled", n_splits=2).fit(RegressionModule(), _OwnLoaders(True), kwargs)


class _LightningInfo(logging.Handler):
    """Collects what Lightning logs at INFO while the block runs (its per-fold banner and per-epoch notes)."""

    NAMES = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _LightningInfo:
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)


class _WorseLastEpoch(Callback):
    """Spoils the weights just before the last epoch's validation, so that the best epoch is an earlier one."""

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn_like(p))


def test_kept_metrics_are_the_restored_models_and_match_its_out_of_fold_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's "kept" row is what each fold kept (EarlyStopping restored an earlier epoch), not its last epoch:
    its validation loss and macro accuracy equal those computed from the fold's own out-of-fold predictions."""
    from epochkit import EarlyStopping as RestoringEarlyStopping

    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=100)
    callbacks = [RestoringEarlyStopping("val_loss", patience=5, restore_best_weights=True), _WorseLastEpoch()]
    kwargs = {**QUIET, "enable_checkpointing": True, "max_epochs": 3, "limit_train_batches": 4, "callbacks": callbacks}
    with _LightningInfo() as info:
        result = CrossValidator(2, stratify=True, seed=1, root_dir=tmp_path).fit(
            DigitsClassifier(hidden=32), dm, kwargs
        )
    # Quiet: no per-epoch "`weights_only` was not set" from the resume checkpoint, Lightning's banner once.
    assert not [m for m in info.messages if "weights_only" in m], info.messages
    assert info.messages.count("GPU available: False, used: False") == 1, info.messages

    labels = dm.train_set.tensors[1]
    manifest = json.loads((tmp_path / "cv_manifest.json").read_text())
    for fold in result.folds:
        at_best = fold.best_epoch["val_loss"]
        assert fold.kept_epoch == at_best < 2  # restored, not the spoiled last epoch
        assert fold.kept["val_loss"] == pytest.approx(fold.history[at_best]["metrics"]["val_loss"], rel=1e-5)
        assert fold.kept["val_loss"] < fold.last["val_loss"]
        val = torch.as_tensor(manifest["folds"][fold.fold]["val"])
        probs, y = result.oof_predictions[val], labels[val]
        oof_loss = float(-probs[torch.arange(len(y)), y].log().mean())
        oof_acc = float(torchmetrics.functional.classification.multiclass_accuracy(probs, y, num_classes=10))
        assert fold.kept["val_loss"] == pytest.approx(oof_loss, rel=1e-5)
        assert fold.kept["val_acc"] == pytest.approx(oof_acc, rel=1e-6)

    saved = json.loads((tmp_path / "cv_results.json").read_text())
    kept = [f.kept["val_loss"] for f in result.folds]
    assert saved["aggregate"]["kept"]["val_loss"]["mean"] == pytest.approx(np.mean(kept))
    assert result.mean("val_loss") == pytest.approx(np.mean(kept))  # the kept models by default
    with pytest.raises(KeyError, match=r"no fold has a 'kept' value of 'train_loss' .*validated once after fit"):
        result.mean("train_loss")
    rows = list(csv.DictReader((tmp_path / "cv_results.csv").open()))
    assert [float(r["kept/val_loss"]) for r in rows[:2]] == pytest.approx(kept)
    assert [int(r["kept_epoch"]) for r in rows[:2]] == [f.kept_epoch for f in result.folds]
    out = capsys.readouterr().out.splitlines()
    for fold in result.folds:
        line = next(x for x in out if x.startswith(f"fold {fold.fold} ({fold.fold + 1}/2): 3 epochs, "))
        assert line.endswith(
            f"; kept epoch {fold.kept_epoch}: val_acc {fold.kept['val_acc']:.4f}, val_loss {fold.kept['val_loss']:.4f}"
        )
    row = next(x for x in out if x.startswith("val_loss (kept)"))
    assert row.split()[2:4] == [f"{v:.4f}" for v in kept]
