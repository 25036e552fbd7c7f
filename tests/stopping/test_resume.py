"""Resuming from a checkpoint mid-patience, mid-smoothing window or mid-strip stops where an uninterrupted run does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger

import epochkit
from epochkit.stopping import StoppingReason
from tests.helpers import read_tensorboard
from tests.stopping.scripted import fit
from tests.stopping.test_extras import E_TR, E_VA

SMOOTH_SEQ = [1.0, 0.9, 5.0, 0.8, 0.7, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]


@pytest.mark.parametrize(
    ("seq", "kwargs", "interrupt_after", "stopped_epoch"),
    [
        ([1.0, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99], {"patience": 4}, 3, 5),  # Lightning's arguments only
        ([1.0, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99], {"patience": 4, "restore_best_weights": True}, 3, 5),
        (SMOOTH_SEQ, {"patience": 2, "smoothing": "median", "smoothing_window": 3}, 4, 8),
        (SMOOTH_SEQ, {"patience": 2, "smoothing": "ema", "smoothing_window": 2, "baseline": 0.95}, 3, 3),
        (E_VA, {"criterion": "PQ", "alpha": 1.0, "strip_length": 3, "train_monitor": "train_err"}, 4, 8),
        (E_VA, {"criterion": "UP", "successive_strips": 2, "strip_length": 3}, 7, 8),
    ],
    ids=["patience", "patience+restore", "median", "ema+baseline", "PQ-mid-strip", "UP-mid-strip"],
)
def test_resumed_run_equals_uninterrupted(
    seq: list[float], kwargs: dict[str, Any], interrupt_after: int, stopped_epoch: int, tmp_path: Path
) -> None:
    whole = epochkit.EarlyStopping(monitor="val_loss", **kwargs)
    whole_trainer, _, whole_model = fit(whole, seq, tmp_path / "whole", train=E_TR)
    assert whole.stopped_epoch == stopped_epoch

    first = epochkit.EarlyStopping(monitor="val_loss", **kwargs)
    first_trainer, _, _ = fit(first, seq, tmp_path / "first", max_epochs=interrupt_after, train=E_TR)
    assert first.stopped_epoch == 0  # interrupted before any stop
    ckpt = tmp_path / "mid.ckpt"
    first_trainer.save_checkpoint(ckpt)

    resumed = epochkit.EarlyStopping(monitor="val_loss", **kwargs)
    trainer, trace, model = fit(resumed, seq, tmp_path / "resumed", train=E_TR, ckpt_path=str(ckpt))
    assert trace.rows[0]["epoch"] == interrupt_after  # really resumed, not restarted
    assert trainer.current_epoch == whole_trainer.current_epoch
    assert resumed.stopping_reason is whole.stopping_reason
    assert resumed.stopping_reason_message == whole.stopping_reason_message
    assert resumed.best_epoch == whole.best_epoch >= 0
    a, b = resumed.state_dict(), whole.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key == "best_weights":
            assert all(torch.equal(a[key][k], b[key][k]) for k in b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    if kwargs.get("restore_best_weights"):
        # The best epoch (1) came before the interruption: its weights travelled in the checkpoint.
        assert resumed.restored_epoch == whole.restored_epoch == 1
        assert all(torch.equal(v, whole_model.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "seq", "reason"),
    [
        ({"criterion": "GL", "alpha": 5.0}, [1.0, 1.2, 1.3, 1.4], StoppingReason.GENERALIZATION_LOSS),
        ({"baseline": 0.5, "patience": 1}, [1.0, 1.1, 1.2, 1.3], StoppingReason.BASELINE_NOT_REACHED),
    ],
)
def test_a_checkpoint_written_after_an_epochkit_stop_reason_loads(
    kwargs: dict[str, Any], seq: list[float], reason: StoppingReason, tmp_path: Path
) -> None:
    """Lightning's loader knows only its own reasons; an epochkit reason in the checkpoint must still load."""
    ours = epochkit.EarlyStopping(monitor="val_loss", **kwargs)
    fit(ours, seq, tmp_path)
    assert ours.stopping_reason == reason
    state = ours.state_dict()
    fresh = epochkit.EarlyStopping(monitor="val_loss", **kwargs)
    fresh.load_state_dict(state)
    assert fresh.stopping_reason == reason and fresh.stopping_reason.name == reason.name
    assert fresh.state_dict()["stopping_reason"] == state["stopping_reason"] == reason.value


def test_with_lightnings_arguments_only_a_resumed_run_logs_and_reports_the_best_epoch(tmp_path: Path) -> None:
    """Lightning's state_dict keys, exactly, and still the best epoch after a resume: it travels beside them."""
    seq = [1.0, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
    runs = {}
    for name, interrupt in (("whole", None), ("resumed", 3)):
        ckpt_path = None
        if interrupt is not None:
            first = epochkit.EarlyStopping(monitor="val_loss", patience=4)
            trainer, _, _ = fit(first, seq, tmp_path / "first", max_epochs=interrupt)
            trainer.save_checkpoint(tmp_path / "mid.ckpt")
            ckpt_path = str(tmp_path / "mid.ckpt")
            saved = torch.load(tmp_path / "mid.ckpt", weights_only=True)
            assert list(saved["callbacks"][first.state_key]) == list(LightningEarlyStopping("val_loss").state_dict())
            beside = saved["epochkit.EarlyStopping"][first.state_key]
            assert beside == {"best_epoch": 1, "best_epoch_score": pytest.approx(0.8)}
        es = epochkit.EarlyStopping(monitor="val_loss", patience=4)
        fit(es, seq, tmp_path / name, ckpt_path=ckpt_path, logger=TensorBoardLogger(tmp_path / name, name="tb"))
        runs[name] = (es, read_tensorboard(tmp_path / name / "tb"))
    (whole, whole_run), (resumed, resumed_run) = runs["whole"], runs["resumed"]
    assert resumed.best_epoch == whole.best_epoch == 1
    tag = "early_stopping/val_loss/"
    assert resumed_run.scalar_values(tag + "best_epoch") == whole_run.scalar_values(tag + "best_epoch")[3:] == [1] * 3
    assert resumed_run.text_values(tag + "reason") == whole_run.text_values(tag + "reason")
    assert "Best val_loss: 0.8 at epoch 1." in resumed_run.text_values(tag + "reason")[0]
