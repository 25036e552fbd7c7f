"""A real module whose monitored metrics follow a script, so a test knows every value an EarlyStopping sees.

:class:`ScriptedModule` trains the shared :class:`~tests.helpers.RegressionModule` (real weights that change every
epoch) and logs ``val_loss[epoch]`` at the end of each validation and ``train_err[epoch]`` at the end of each training
epoch. A script may differ per DDP rank, and ``None`` leaves the metric unlogged on that rank and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import QUIET, RegressionDataModule, RegressionModule, quiet_trainer

Script = Sequence[float | None]


class ScriptedModule(RegressionModule):
    def __init__(
        self,
        val: Script | dict[int, Script],
        train: Script | None = None,
        val_name: str = "val_loss",
        train_name: str = "train_err",
    ) -> None:
        super().__init__()
        self.val_script = val
        self.train_script = train
        self.val_name = val_name
        self.train_name = train_name
        # A buffer that differs across DDP ranks (each sees its own shard), as BatchNorm statistics do.
        self.register_buffer("seen_sum", torch.zeros(()))

    def configure_optimizers(self) -> Any:
        # Built by LightningCLI, the hyperparameters are the CLI's init_args only (no `lr`).
        return torch.optim.SGD(self.parameters(), lr=self.hparams.get("lr", 0.05))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen_sum += batch[0].detach().sum()
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("real_val_loss", torch.nn.functional.mse_loss(self(x), y))

    def on_validation_epoch_end(self) -> None:
        script = self.val_script[self.global_rank] if isinstance(self.val_script, dict) else self.val_script
        value = _at(script, self.current_epoch)
        if value is not None:
            self.log(self.val_name, torch.tensor(value, dtype=torch.float32))

    def on_train_epoch_end(self) -> None:
        value = _at(self.train_script, self.current_epoch) if self.train_script is not None else None
        if value is not None:
            self.log(self.train_name, torch.tensor(value, dtype=torch.float32))


def _at(script: Script, epoch: int) -> float | None:
    return script[epoch] if epoch < len(script) else script[-1]


class Trace(Callback):
    """Records every EarlyStopping's state after each epoch's check, and each epoch's weights."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self._running = False

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        es = trainer.early_stopping_callback
        assert es is not None
        best = float(es.best_score)
        self.rows.append(
            {
                "epoch": epoch,
                "wait_count": es.wait_count,
                "best_score": "nan" if math.isnan(best) else best,
                "stopping_reason": es.stopping_reason,
                "stopped_epoch": es.stopped_epoch,
                "message": es.stopping_reason_message,
                "should_stop": trainer.should_stop,
            }
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._running:  # not on the first epoch of this fit (which may be a resumed one)
            self._record(trainer, pl_module, trainer.current_epoch - 1)
        self._running = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.weights[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, trainer.current_epoch - 1)  # epochs completed - 1: the last one run


FAST: dict[str, Any] = {
    **QUIET,
    "devices": 1,
    "limit_train_batches": 1,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
}


def fit(
    callback: Callback,
    val: Script,
    root: Path,
    max_epochs: int | None = None,
    train: Script | None = None,
    extra_callbacks: Sequence[Callback] = (),
    ckpt_path: str | None = None,
    batches: int = 2,
    **trainer_kwargs: Any,
) -> tuple[pl.Trainer, Trace, ScriptedModule]:
    """Fit a ScriptedModule with ``callback`` (first in the list, then a Trace) for up to ``len(val)`` epochs, on
    ``batches`` training batches of 8 samples an epoch (``limit_train_batches`` may use fewer)."""
    trace = Trace()
    trainer = quiet_trainer(
        root,
        [callback, *extra_callbacks, trace],
        **{**FAST, "max_epochs": max_epochs if max_epochs is not None else len(val), **trainer_kwargs},
    )
    pl.seed_everything(0, verbose=False)
    model = ScriptedModule(val, train)
    trainer.fit(model, datamodule=RegressionDataModule(num_samples=8 * batches, batch_size=8), ckpt_path=ckpt_path)
    return trainer, trace, model
