"""The shared logging and distributed helpers, with a real Trainer (and a real 2-process DDP run)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from epochkit import _distributed, _logging
from tests.helpers import RegressionDataModule, RegressionModule, fit_ddp, read_tensorboard


class _Logs(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _logging.log_scalars(trainer, {"probe/epoch": float(trainer.current_epoch)})
        _logging.log_text(trainer, "probe/report", f"**epoch {trainer.current_epoch}**")


def test_scalars_reach_every_logger_and_text_reaches_tensorboard(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=[TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")],
        callbacks=[_Logs()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=32, batch_size=8))
    run = read_tensorboard(tmp_path / "tb")
    # 4 optimizer steps an epoch: epoch-end logs land at the step Lightning logs at, 4 and 8.
    assert run.scalars["probe/epoch"] == [(4, 0.0), (8, 1.0)]
    assert run.text_values("probe/report") == ["**epoch 0**", "**epoch 1**"]
    csv_text = (Path(trainer.loggers[1].log_dir) / "metrics.csv").read_text()
    assert "probe/epoch" in csv_text.splitlines()[0]
    assert _logging.log_dir(trainer) == Path(trainer.loggers[0].log_dir)


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
