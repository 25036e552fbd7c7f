"""The test harness itself: the DDP runner really runs two ranks, the TensorBoard reader really reads."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from tests.helpers import RegressionDataModule, RegressionModule, fit_ddp, quiet_trainer, read_tensorboard


def _rank_facts(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
    return {"pid_rank": trainer.strategy.global_rank, "num_train_batches": trainer.num_training_batches}


@pytest.mark.ddp
def test_fit_ddp_runs_two_ranks_that_stay_in_sync(tmp_path) -> None:
    model = RegressionModule()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    reports = fit_ddp(model, RegressionDataModule(num_samples=64, batch_size=8), tmp_path, probe=_rank_facts)
    assert [r.rank for r in reports] == [0, 1]
    assert all(r.world_size == 2 and r.error is None for r in reports)
    assert [r.extra["pid_rank"] for r in reports] == [0, 1]
    # DistributedSampler halves the data: 64 samples / 2 ranks / batch 8 = 4 steps per rank.
    assert [r.extra["num_train_batches"] for r in reports] == [4, 4]
    assert all(r.global_step == 4 for r in reports)
    # DDP averaged gradients, so the ranks end with identical weights that moved away from the start.
    for key, value in reports[0].model_state.items():
        assert torch.equal(value, reports[1].model_state[key])
        assert not torch.equal(value, start[key])


class _LogText(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(trainer.logger, TensorBoardLogger)
        trainer.logger.experiment.add_text("harness/note", f"epoch {trainer.current_epoch}", trainer.global_step)


def test_read_tensorboard_returns_what_a_real_trainer_logged(tmp_path) -> None:
    trainer = quiet_trainer(
        None, [_LogText()], max_epochs=2, logger=TensorBoardLogger(tmp_path, name="run"), log_every_n_steps=1
    )
    trainer.fit(RegressionModule(), datamodule=RegressionDataModule(num_samples=32, batch_size=8))
    run = read_tensorboard(tmp_path)
    # 32 samples / batch 8 = 4 steps an epoch, each logged with log_every_n_steps=1.
    assert [step for step, _ in run.scalars["train_loss_step"]] == list(range(8))
    assert len(run.scalar_values("val_loss")) == 2
    assert run.scalar_values("val_loss")[-1] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert run.text_values("harness/note") == ["epoch 0", "epoch 1"]
    with pytest.raises(KeyError, match="no scalar tag 'missing'"):
        run.scalar_values("missing")


def test_read_tensorboard_rejects_an_empty_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
        read_tensorboard(tmp_path)
