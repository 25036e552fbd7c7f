"""epochkit's additions, each on a scripted metric sequence whose stop epoch is worked out by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger

import epochkit
from epochkit.stopping import StoppingReason
from tests.helpers import read_tensorboard
from tests.stopping.scripted import fit

# Prechelt's example curve (see test_criteria): strips of 3 checks end at epochs 2, 5, 8.
E_VA = [0.50, 0.40, 0.35, 0.36, 0.34, 0.37, 0.40, 0.42, 0.45, 0.47, 0.5]
E_TR = [0.60, 0.45, 0.40, 0.38, 0.37, 0.365, 0.362, 0.361, 0.3605, 0.3604, 0.3603]


def _es(**kwargs: Any) -> epochkit.EarlyStopping:
    return epochkit.EarlyStopping(monitor="val_loss", **kwargs)


def test_start_from_epoch_ignores_earlier_checks(tmp_path: Path) -> None:
    seq = [1.0, 2.0, 3.0, 4.0, 3.5, 3.6, 3.7]
    plain = _es(patience=1)
    fit(plain, seq, tmp_path / "plain")
    assert plain.stopped_epoch == 1
    warm = _es(patience=1, start_from_epoch=3)
    trainer, _, _ = fit(warm, seq, tmp_path / "warm")
    # Epochs 0-2 are ignored; 4.0 (epoch 3) is the first best, 3.5 (epoch 4) improves, 3.6 (epoch 5) stops.
    assert (warm.stopped_epoch, warm.best_epoch, float(warm.best_score)) == (5, 4, 3.5)
    assert trainer.current_epoch == 6


def test_a_stop_decided_before_min_epochs_does_not_fire_after_the_metric_recovered(tmp_path: Path) -> None:
    seq = [1.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5]
    theirs = LightningEarlyStopping(monitor="val_loss", patience=1)
    ltrainer, _, _ = fit(theirs, seq, tmp_path / "lightning", min_epochs=4)
    assert ltrainer.current_epoch == 4  # Lightning's latch: decided at epoch 1, fired at min_epochs
    ours = _es(patience=1)
    trainer, trace, _ = fit(ours, seq, tmp_path / "ours", min_epochs=4)
    assert trainer.current_epoch == len(seq)  # the metric recovered at epoch 2: no stop
    assert ours.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    assert (ours.stopped_epoch, ours.stopping_reason_message) == (0, None)  # as if never signalled
    # Signalled at epoch 1 exactly as Lightning does, withdrawn by the check of epoch 2.
    assert [row["should_stop"] for row in trace.rows] == [False, True, False, False, False, False, False]


def test_a_stop_before_min_epochs_still_fires_at_min_epochs_without_recovery(tmp_path: Path) -> None:
    seq = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    ours = _es(patience=1)
    trainer, _, _ = fit(ours, seq, tmp_path, min_epochs=4)
    assert trainer.current_epoch == 4
    assert (ours.stopped_epoch, ours.stopping_reason, ours.wait_count) == (3, EarlyStoppingReason.PATIENCE_EXHAUSTED, 3)


def test_baseline_not_beaten_within_patience(tmp_path: Path) -> None:
    # Keras' rule: improving on the best never stops, even above the baseline ...
    ours = _es(patience=3, baseline=0.5)
    fit(ours, [1.0, 0.9, 0.8, 0.7, 0.6, 0.55], tmp_path / "improving")
    assert ours.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    # ... but the count of checks without beating the baseline runs on, and the first check that does not improve
    # after `patience` of them stops.
    ours = _es(patience=3, baseline=0.5)
    fit(ours, [1.0, 0.9, 0.8, 0.85, 0.7], tmp_path / "a")
    assert (ours.stopped_epoch, ours.stopping_reason) == (3, StoppingReason.BASELINE_NOT_REACHED)
    assert "did not beat the baseline 0.5 in the last 4 records" in ours.stopping_reason_message
    # Beaten at epoch 2: from then on plain patience.
    ours = _es(patience=3, baseline=0.5)
    fit(ours, [1.0, 0.9, 0.4, 0.45, 0.46, 0.47, 0.3], tmp_path / "b")
    assert (ours.stopped_epoch, ours.stopping_reason) == (5, EarlyStoppingReason.PATIENCE_EXHAUSTED)


def test_relative_min_delta_on_negative_values(tmp_path: Path) -> None:
    # max mode, 10 % of |best|: -9.5 does not beat -10 (needs > -9.0), -8.9 does; -8.5 does not beat -8.9 (needs
    # > -8.01), -8.0 does; -7.5 and -7.4 do not beat -8.0 (need > -7.2): stop at epoch 6.
    seq = [-10.0, -9.5, -8.9, -8.5, -8.0, -7.5, -7.4, -7.0]
    ours = _es(mode="max", patience=2, min_delta=0.1, min_delta_mode="rel")
    fit(ours, seq, tmp_path)
    assert (ours.stopped_epoch, ours.best_epoch, float(ours.best_score)) == (6, 4, -8.0)


@pytest.mark.parametrize(
    ("smoothing", "stopped_epoch", "best_epoch", "best"),
    [
        (None, 7, 5, 0.6),  # raw: the 5.0 spike is one miss; 0.65, 0.7 after 0.6 exhaust patience 2
        ("median", 8, 6, 0.65),  # medians of 3: 1, .95, 1, .9, .8, .7, .65, .65, .7
        ("mean", 3, 1, 0.95),  # means of 3: 1, .95, 2.3, 2.23: the spike stays in the window
        ("ema", 3, 1, 0.95),  # span 3 (a = 0.5): 1, .95, 2.975, 1.8875: the spike dominates
    ],
)
def test_smoothing(smoothing: str | None, stopped_epoch: int, best_epoch: int, best: float, tmp_path: Path) -> None:
    seq = [1.0, 0.9, 5.0, 0.8, 0.7, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]
    ours = _es(patience=2, smoothing=smoothing, smoothing_window=3)
    fit(ours, seq, tmp_path)
    assert (ours.stopped_epoch, ours.best_epoch) == (stopped_epoch, best_epoch)
    assert float(ours.best_score) == pytest.approx(best)


def test_smoothing_applies_to_thresholds_but_check_finite_sees_the_raw_value(tmp_path: Path) -> None:
    # Raw 0.2 (epoch 1) is below the threshold; the means of 2 (1.0, 0.6, 0.55, 0.5) never are.
    ours = _es(stopping_threshold=0.3, smoothing="mean", smoothing_window=2, patience=10)
    fit(ours, [1.0, 0.2, 0.9, 0.1], tmp_path / "a")
    assert ours.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    assert float(ours.best_score) == pytest.approx(0.5)
    ours = _es(smoothing="median", smoothing_window=3)
    fit(ours, [1.0, 0.9, float("inf"), 0.8], tmp_path / "b")  # the median of 3 would hide the inf
    assert (ours.stopped_epoch, ours.stopping_reason) == (2, EarlyStoppingReason.NON_FINITE_METRIC)


@pytest.mark.parametrize(
    ("kwargs", "stopped_epoch", "reason"),
    [
        ({"criterion": "GL", "alpha": 5.0}, 5, StoppingReason.GENERALIZATION_LOSS),  # GL(6) = 8.8 > 5
        ({"criterion": "GL", "alpha": 10.0}, 6, StoppingReason.GENERALIZATION_LOSS),  # GL(7) = 17.6 > 10
        ({"criterion": "PQ", "alpha": 0.4, "strip_length": 3}, 5, StoppingReason.PROGRESS_QUOTIENT),  # PQ(6)=0.48
        ({"criterion": "PQ", "alpha": 1.0, "strip_length": 3}, 8, StoppingReason.PROGRESS_QUOTIENT),  # PQ(9)=17.5
        ({"criterion": "UP", "successive_strips": 1, "strip_length": 3}, 5, StoppingReason.SUCCESSIVE_INCREASES),
        ({"criterion": "UP", "successive_strips": 2, "strip_length": 3}, 8, StoppingReason.SUCCESSIVE_INCREASES),
    ],
)
def test_prechelt_criteria_replace_patience(
    kwargs: dict[str, Any], stopped_epoch: int, reason: StoppingReason, tmp_path: Path
) -> None:
    if kwargs["criterion"] == "PQ":
        kwargs = {**kwargs, "train_monitor": "train_err"}
    ours = _es(patience=1, **kwargs)  # patience 1 would stop at epoch 3 (0.36 > 0.35); Prechelt replaces it
    fit(ours, E_VA, tmp_path, train=E_TR)
    assert (ours.stopped_epoch, ours.stopping_reason) == (stopped_epoch, reason)
    assert ours.stopping_reason_message.endswith("Signaling Trainer to stop.")


def test_logs_scalars_and_the_reason_to_tensorboard(tmp_path: Path) -> None:
    ours = _es(criterion="PQ", alpha=1.0, strip_length=3, train_monitor="train_err")
    fit(ours, E_VA, tmp_path, train=E_TR, logger=TensorBoardLogger(tmp_path, name="tb"))
    run = read_tensorboard(tmp_path / "tb")
    tag = "early_stopping/val_loss/"
    assert run.scalar_values(tag + "best_score") == pytest.approx([0.5, 0.4, 0.35, 0.35, 0.34, 0.34, 0.34, 0.34, 0.34])
    assert run.scalar_values(tag + "best_epoch") == [0, 1, 2, 2, 4, 4, 4, 4, 4]
    assert run.scalar_values(tag + "wait_count") == [0, 0, 0, 1, 0, 1, 2, 3, 4]
    assert run.scalar_values(tag + "generalization_loss")[5] == pytest.approx(100 * (0.37 / 0.34 - 1), rel=1e-5)
    assert run.scalar_values(tag + "progress_quotient") == pytest.approx([0.0, 0.48309, 17.4942], rel=1e-3)
    assert run.scalar_values(tag + "stopped") == [0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert tag + "stopping_reason" not in run.scalars  # the reason is text, not an enum value plotted as a number
    (text,) = run.text_values(tag + "reason")
    assert text.startswith("**PROGRESS_QUOTIENT** at epoch 8: Progress quotient of val_loss over train_err")
