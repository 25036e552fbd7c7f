"""restore_best_weights: the module ends fit with the weights of the best check, from host memory or a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

import epochkit
from epochkit.stopping import HostWeights
from tests.helpers import RegressionDataModule, quiet_trainer, read_tensorboard
from tests.stopping.scripted import FAST, ScriptedModule, fit


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("seq", "patience", "best_epoch", "stops"),
    [
        ([1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9], 3, 2, True),  # stops at epoch 5
        ([1.0, 0.8, 0.5, 0.6, 0.7, 0.65], 10, 2, False),  # runs to max_epochs
    ],
)
def test_host_copy_is_loaded_at_fit_end(
    seq: list[float], patience: int, best_epoch: int, stops: bool, tmp_path: Path
) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    trainer, trace, model = fit(es, seq, tmp_path)
    last = max(trace.weights)
    assert (last < len(seq) - 1) is stops
    assert not _same(trace.weights[last], trace.weights[best_epoch])  # the weights did move after the best
    assert _same(model.state_dict(), trace.weights[best_epoch])
    assert es.restored_epoch == es.best_epoch == best_epoch
    trainer.save_checkpoint(tmp_path / "restored.ckpt")  # the README's recipe for the restored model on disk
    assert _same(torch.load(tmp_path / "restored.ckpt", weights_only=True)["state_dict"], trace.weights[best_epoch])


def test_without_restore_the_final_weights_stay(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3)
    _, trace, model = fit(es, [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9], tmp_path)
    assert _same(model.state_dict(), trace.weights[max(trace.weights)])
    assert es.restored_epoch == -1


def test_checkpoint_mode_reloads_the_model_checkpoints_best_file(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights="checkpoint")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min", save_top_k=1)
    _, trace, model = fit(
        es,
        [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9],
        tmp_path,
        extra_callbacks=[ckpt],
        enable_checkpointing=True,
        logger=TensorBoardLogger(tmp_path, name="tb"),
    )
    assert Path(ckpt.best_model_path).name.startswith("epoch=2")
    assert _same(model.state_dict(), trace.weights[2])
    assert es.restored_epoch == 2
    run = read_tensorboard(tmp_path / "tb")
    assert run.scalar_values("early_stopping/val_loss/restored_epoch") == [2.0]
    assert run.text_values("early_stopping/val_loss/reason")[-1].endswith("Restored the weights of epoch 2.")
    assert not es.state_dict().get("best_weights")  # no copy held in memory or in checkpoints


def test_checkpoint_mode_without_a_matching_model_checkpoint_fails_at_setup(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", restore_best_weights="checkpoint")
    other = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max")
    with pytest.raises(MisconfigurationException, match=r"monitor='val_loss', mode='min'.*monitor='val_acc'") as err:
        fit(es, [1.0, 0.9], tmp_path, extra_callbacks=[other], enable_checkpointing=True)
    assert "restore_best_weights=True" in str(err.value)
    assert es.best_epoch == -1  # failed before training


def test_nothing_to_restore_warns_and_keeps_the_final_weights(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", restore_best_weights=True, start_from_epoch=5)
    with pytest.warns(UserWarning, match="no best weights"):
        _, trace, model = fit(es, [1.0, 0.9, 0.8], tmp_path)
    assert _same(model.state_dict(), trace.weights[2])


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("count", torch.zeros(()))


def test_host_weights_reuses_its_buffers_and_stores_tied_weights_once() -> None:
    module = _Tied()
    copy = HostWeights()
    copy.capture(module)
    pointers = [t.data_ptr() for t in copy.state().values()]
    # weight (16) + 2 biases (4 each) + count (1), float32; the tied weight is held once
    assert copy.nbytes == (16 + 4 + 4 + 1) * 4
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    copy.capture(module)
    assert [t.data_ptr() for t in copy.state().values()] == pointers  # copied in place, no new allocation
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.a.weight.zero_()
        module.count.fill_(3.0)
    copy.load_into(module)
    assert _same(module.state_dict(), expected)
    assert module.b.weight is module.a.weight
    restored = HostWeights()
    restored.load_state(copy.state())
    assert restored.nbytes == copy.nbytes and _same(restored.state(), copy.state())


class _CountingModule(ScriptedModule):
    """Counts its training steps in a non-persistent buffer: not in ``state_dict()``, but part of the module."""

    def __init__(self, val: list[float]) -> None:
        super().__init__(val)
        self.register_buffer("steps_seen", torch.zeros(()), persistent=False)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps_seen += 1
        return super().training_step(batch, batch_idx)


def test_non_persistent_buffers_are_restored_too(tmp_path: Path) -> None:
    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    seen: dict[int, float] = {}

    class Record(Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen[trainer.current_epoch] = float(pl_module.steps_seen)

    trainer = quiet_trainer(tmp_path, [Record(), es], **FAST, max_epochs=7)
    model = _CountingModule([1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9])
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=16, batch_size=8))
    assert "steps_seen" not in model.state_dict()
    assert seen == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 5: 6.0}
    assert es.restored_epoch == 2 and float(model.steps_seen) == 3.0


def test_the_restore_is_logged_where_lightnings_messages_go(tmp_path: Path) -> None:
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Lines(logging.INFO)
    logger = logging.getLogger("lightning.pytorch")  # Lightning's own console handler hangs here
    logger.addHandler(handler)
    try:
        es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)  # verbose=False
        fit(es, [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9], tmp_path)
    finally:
        logger.removeHandler(handler)
    assert "EarlyStopping: restored the weights of epoch 2, the best `val_loss` = 0.5." in lines
    assert logger.getEffectiveLevel() <= logging.INFO  # shown by default, like "`Trainer.fit` stopped: ..."


def _touch(path: str) -> None:
    Path(path).touch()


class _Planted:
    """Unpickling this runs ``_touch(marker)``: what a planted file in a shared checkpoint directory could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _touch, (str(self.marker),)


def test_checkpoint_restore_refuses_a_planted_pickle_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)

    class Plant(Callback):  # runs before EarlyStopping's on_train_end: swaps the best file for a planted one
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            torch.save({"state_dict": {}, "epoch": 2, "payload": _Planted(marker)}, checkpoint.best_model_path)

    es = epochkit.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights="checkpoint")
    trainer = quiet_trainer(tmp_path, [Plant(), es, checkpoint], **{**FAST, "enable_checkpointing": True}, max_epochs=5)
    with pytest.raises(RuntimeError, match=r"refused to load .*ckpt.epoch=2-step=3\.ckpt: it holds objects") as err:
        trainer.fit(ScriptedModule([1.0, 0.8, 0.5, 0.6, 0.7]), RegressionDataModule(num_samples=16, batch_size=8))
    assert checkpoint.best_model_path in str(err.value)
    assert "(WeightsUnpickler error: Unsupported global: GLOBAL tests.stopping.test_restore._touch was not" in str(
        err.value
    )
    assert not marker.exists()
    # The plant is real: an unrestricted load would have run it.
    torch.load(checkpoint.best_model_path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("restore", [True, "checkpoint"])
def test_lightning_cli_users_find_the_restored_weights_in_the_best_checkpoint(restore: Any, tmp_path: Path) -> None:
    """The README's recipe: a ModelCheckpoint on the same monitor and mode keeps the best weights on disk; they are
    the weights EarlyStopping restored into the model (``fit`` under LightningCLI ends there)."""
    config = {
        "seed_everything": 0,
        "trainer": {
            **{k: v for k, v in FAST.items() if k != "enable_checkpointing"},
            "max_epochs": 7,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "epochkit.EarlyStopping",
                    "init_args": {"monitor": "val_loss", "patience": 3, "restore_best_weights": restore},
                },
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val_loss", "mode": "min", "dirpath": str(tmp_path / "ckpt")},
                },
            ],
        },
        "model": {
            "class_path": "tests.stopping.scripted.ScriptedModule",
            "init_args": {"val": [1.0, 0.8, 0.5, 0.6, 0.7, 0.65, 0.9]},
        },
        "data": {"class_path": "tests.helpers.RegressionDataModule", "init_args": {"num_samples": 16}},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(args=["fit", "--config", str(config_path)], save_config_kwargs={"overwrite": True})
    es = cli.trainer.early_stopping_callback
    assert isinstance(es, epochkit.EarlyStopping) and (es.stopped_epoch, es.restored_epoch) == (5, 2)
    best = cli.trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    # The step count in the name depends on how jsonargparse reads `limit_train_batches: 1` (the int: one batch, or
    # the float 1.0: all of them; it differs with pydantic installed, as transformers does): the epoch is what counts.
    steps = 3 * cli.trainer.num_training_batches
    assert Path(best).name == f"epoch=2-step={steps}.ckpt"
    on_disk = torch.load(best, weights_only=True)["state_dict"]
    assert _same(cli.model.state_dict(), on_disk)
    last = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert [p.name for p in last] == [f"epoch=2-step={steps}.ckpt"]


@pytest.mark.parametrize(
    ("seq", "mode", "best_epoch"),
    [
        # Every value is worse than the one before, by less than the tolerance: Lightning's best_score drifts up to
        # the worst value, but the best weights stay those of epoch 0.
        ([1.0, 1.04, 1.08, 1.12, 1.16], "min", 0),
        ([1.0, 1.04, 0.98, 1.02, 1.06, 1.1], "min", 2),  # a strict improvement at epoch 2, then drift again
        ([1.0, 0.96, 1.01, 0.97, 0.93, 0.89], "max", 2),
    ],
    ids=["drift_only", "min", "max"],
)
def test_a_negative_min_delta_restores_the_best_value_not_the_tolerated_drift(
    seq: list[float], mode: str, best_epoch: int, tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {"monitor": "val_loss", "patience": 2, "min_delta": -0.05, "mode": mode}
    theirs = LightningEarlyStopping(**kwargs)
    fit(theirs, seq, tmp_path / "lightning")
    es = epochkit.EarlyStopping(**kwargs, restore_best_weights=True)
    _, trace, model = fit(es, seq, tmp_path / "ours", logger=TensorBoardLogger(tmp_path, name="tb"))
    # Lightning's decisions and its best_score (the tolerance moved it along) are unchanged ...
    assert float(es.best_score) == float(theirs.best_score) == pytest.approx(seq[-1])
    assert (es.wait_count, es.stopping_reason) == (theirs.wait_count, theirs.stopping_reason)
    # ... and the best epoch, the weights restored and what is reported follow the best value.
    assert es.best_epoch == es.restored_epoch == best_epoch
    assert _same(model.state_dict(), trace.weights[best_epoch])
    run = read_tensorboard(tmp_path / "tb")
    assert (
        f"Best val_loss: {seq[best_epoch]:.6g} at epoch {best_epoch}."
        in run.text_values("early_stopping/val_loss/reason")[-1]
    )
