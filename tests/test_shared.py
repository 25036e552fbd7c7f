"""The shared logging and distributed helpers, with a real Trainer (and a real 2-process DDP run)."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from epochkit import DestroyProcessGroupAtExit, _distributed, _logging
from tests.helpers import RegressionDataModule, RegressionModule, fit_ddp, read_tensorboard


class _Logs(Callback):
    """Logs through epochkit's helpers from the hooks epochkit's callbacks log from."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        _logging.log_scalars(trainer, {"probe/batch": 1.0})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            _logging.log_scalars(trainer, {"probe/validation": 1.0})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _logging.log_scalars(trainer, {"probe/epoch": float(trainer.current_epoch)})
        _logging.log_text(trainer, "probe/report", f"**epoch {trainer.current_epoch}**")


def _steps(run: object, tag: str) -> list[int]:
    return [step for step, _ in run.scalars[tag]]  # type: ignore[attr-defined]


def test_scalars_reach_every_logger_at_lightnings_own_steps_and_text_reaches_tensorboard(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        log_every_n_steps=1,
        logger=[TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")],
        callbacks=[_Logs()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=32, batch_size=8))
    run = read_tensorboard(tmp_path / "tb")
    # 4 optimizer steps an epoch: Lightning logs the epoch's metrics at the step of its last batch, 3 and 7, and
    # so must epochkit's epoch-end scalars (they were one step late, at 4 and 8: the curves did not line up).
    assert _steps(run, "train_loss_epoch") == _steps(run, "val_loss") == [3, 7]
    assert run.scalars["probe/epoch"] == [(3, 0.0), (7, 1.0)]
    assert _steps(run, "probe/validation") == [3, 7]
    assert _steps(run, "probe/batch") == _steps(run, "train_loss_step") == list(range(8))
    assert run.text["probe/report"] == [(3, "**epoch 0**"), (7, "**epoch 1**")]
    csv_text = (Path(trainer.loggers[1].log_dir) / "metrics.csv").read_text()
    assert "probe/epoch" in csv_text.splitlines()[0]
    assert _logging.log_dir(trainer) == Path(trainer.loggers[0].log_dir)


def test_epochkits_epoch_scalars_land_on_lightnings_steps(tmp_path: Path) -> None:
    """The callbacks' own scalars: ShuffleAudit at train epoch end, EarlyStopping where it checks."""
    from epochkit import EarlyStopping, ShuffleAudit

    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[
            ShuffleAudit(on_issue="log"),
            EarlyStopping("val_loss", patience=5),
            EarlyStopping("train_loss_epoch", patience=5, check_on_train_epoch_end=True),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=40, batch_size=8))
    run = read_tensorboard(tmp_path / "tb")
    lightning = _steps(run, "val_loss")
    assert lightning == _steps(run, "train_loss_epoch") == [4, 9, 14]
    assert _steps(run, "shuffle_audit/coverage") == lightning
    assert _steps(run, "early_stopping/val_loss/best_score") == lightning
    assert _steps(run, "early_stopping/train_loss_epoch/best_score") == lightning


class _ThreeScalars(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        _logging.log_scalars(trainer, {"probe/a": 0.5 + epoch, "probe/b": float(epoch), "probe/c": 7})


def _events_with(log_dir: Path, prefix: str) -> list[list[tuple[str, float]]]:
    """The (tag, value) pairs of each event under ``log_dir`` whose tags start with ``prefix``, read with
    TensorBoard's own event file loader."""
    events = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            values = [(v.tag, v.simple_value) for v in event.summary.value if v.tag.startswith(prefix)]
            if values:
                events.append(values)
    return events


def test_tensorboard_gets_the_scalars_of_one_call_as_one_event(tmp_path: Path) -> None:
    """One call, one event (TensorBoardLogger.log_metrics writes one per scalar, each a wake-up of TensorBoard's
    writer thread); the values read back are the same. A logger with a prefix goes through log_metrics."""
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=[TensorBoardLogger(tmp_path, name="tb"), TensorBoardLogger(tmp_path, name="prefixed", prefix="p")],
        callbacks=[_ThreeScalars()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=32, batch_size=8))
    assert _events_with(tmp_path / "tb", "probe/") == [
        [("probe/a", 0.5), ("probe/b", 0.0), ("probe/c", 7.0)],
        [("probe/a", 1.5), ("probe/b", 1.0), ("probe/c", 7.0)],
    ]
    assert len(_events_with(tmp_path / "prefixed", "p-probe/")) == 6  # Lightning's path: one event per scalar
    run, prefixed = read_tensorboard(tmp_path / "tb"), read_tensorboard(tmp_path / "prefixed")
    for name in ("a", "b", "c"):
        assert run.scalars[f"probe/{name}"] == prefixed.scalars[f"p-probe/{name}"]
    assert run.scalars["probe/a"] == [(3, 0.5), (7, 1.5)]  # Lightning's own epoch-end steps


_QUIET: dict[str, Any] = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


class _CountingLogger(TensorBoardLogger):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(dict(metrics))
        super().log_metrics(metrics, step)


def test_a_tensorboard_logger_that_overrides_log_metrics_sees_every_call(tmp_path: Path) -> None:
    logger = _CountingLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=logger, callbacks=[_ThreeScalars()], **_QUIET)
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=32, batch_size=8))
    assert [call for call in logger.calls if "probe/a" in call] == [
        {"probe/a": 0.5, "probe/b": 0.0, "probe/c": 7},
        {"probe/a": 1.5, "probe/b": 1.0, "probe/c": 7},
    ]
    assert read_tensorboard(tmp_path / "tb").scalars["probe/a"] == [(3, 0.5), (7, 1.5)]


def test_log_dir_falls_back_to_default_root_dir(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path, accelerator="cpu")
    assert _logging.log_dir(trainer) == tmp_path


def _collectives(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
    rank = trainer.global_rank
    return {
        "broadcast": _distributed.broadcast(trainer, f"from rank {rank}"),
        "any": _distributed.any_rank(trainer, rank == 1),
        "all": _distributed.all_ranks(trainer, rank == 1),
        "gathered": _distributed.gather_objects(trainer, {"rank": rank}),
    }


@pytest.mark.ddp
def test_collectives_agree_across_two_ddp_ranks(tmp_path: Path) -> None:
    reports = fit_ddp(RegressionModule(), RegressionDataModule(), tmp_path, probe=_collectives)
    for report in reports:
        assert report.extra == {
            "broadcast": "from rank 0",
            "any": True,
            "all": False,
            "gathered": [{"rank": 0}, {"rank": 1}],
        }


def test_collectives_on_one_process(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path, accelerator="cpu")
    assert _collectives(trainer, RegressionModule()) == {
        "broadcast": "from rank 0",
        "any": False,
        "all": False,
        "gathered": [{"rank": 0}],
    }


def _write_group_state_at_exit(path: str) -> None:
    Path(path).write_text("alive" if dist.is_initialized() else "destroyed")


class _GroupStateAtExit(Callback):
    """Registers, before DestroyProcessGroupAtExit does, an exit hook that records whether the group still exists:
    exit hooks run last-registered first, so it sees the state the interpreter's finalization will find."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        atexit.register(_write_group_state_at_exit, f"{self.out_dir}/rank{trainer.global_rank}.txt")


@pytest.mark.ddp
def test_ddp_workers_destroy_their_process_group_before_they_exit(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[_GroupStateAtExit(str(tmp_path)), DestroyProcessGroupAtExit()],
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=16, batch_size=4))
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["destroyed", "destroyed"]


EXIT_SCRIPT = """
import atexit, os, sys
from pathlib import Path
import torch.distributed as dist
from epochkit._distributed import destroy_process_group_at_exit

out = Path(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{out}.store", rank=0, world_size=1)
atexit.register(lambda: out.write_text("alive" if dist.is_initialized() else "destroyed"))
if sys.argv[2] == "hook":
    destroy_process_group_at_exit()
    destroy_process_group_at_exit()  # registered once however often it is asked
"""


@pytest.mark.parametrize(("hook", "expected"), [("hook", "destroyed"), ("none", "alive")])
def test_the_exit_hook_destroys_the_group_while_the_interpreter_is_alive(
    hook: str, expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "state.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(out), hook], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == expected
