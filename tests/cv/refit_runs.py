"""The run the refit's kill tests interrupt, as a script: ``python -m tests.cv.refit_runs ROOT [KILL_AT_EPOCH
[SIGNAL]]``.

Two folds of two epochs of the regression module, then a 4-epoch refit. It prints ``REFIT EPOCH <e>`` when each
refit epoch starts and, given ``KILL_AT_EPOCH``, sends itself ``SIGNAL`` (``KILL`` by default, or ``TERM``: a
preemption) when that refit epoch starts (after the previous epoch's resume checkpoint is on disk); ``DONE`` at the end.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from epochkit import CrossValidator
from tests.helpers import QUIET, RegressionDataModule, RegressionModule

REFIT_EPOCHS = 4


class KillInRefit(Callback):
    def __init__(self, kill_at: int | None, sig: signal.Signals) -> None:
        self.kill_at = kill_at
        self.sig = sig

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if Path(trainer.default_root_dir).name != "final":
            return
        print("REFIT EPOCH", trainer.current_epoch, flush=True)
        if trainer.current_epoch == self.kill_at:
            os.kill(os.getpid(), self.sig)


def run(root: str, kill_at: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
    data = RegressionDataModule(num_samples=24, batch_size=4)
    torch.manual_seed(0)
    model = RegressionModule()
    cv = CrossValidator(2, root_dir=root, verbose=False)
    kwargs = {**QUIET, "logger": True, "max_epochs": 2, "callbacks": [KillInRefit(kill_at, sig)]}
    cv.fit(model, data, trainer_kwargs=kwargs)
    cv.refit(model, data, epochs=REFIT_EPOCHS)
    print("DONE", flush=True)


if __name__ == "__main__":
    run(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else None,
        signal.Signals[f"SIG{sys.argv[3]}"] if len(sys.argv) > 3 else signal.SIGKILL,
    )
