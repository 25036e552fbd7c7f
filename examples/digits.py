"""Train the digits classifier with a plain Lightning Trainer and log to TensorBoard.

Run it with ``make demo`` (or ``python examples/digits.py``), then look at the run with
``tensorboard --logdir runs/digits``. ``--fast`` (or ``EPOCHKIT_EXAMPLE_FAST=1``) runs two short epochs, for tests.
"""

from __future__ import annotations

import argparse
import os

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from epochkit import EarlyStopping, LRWarmup, ShuffleAudit
from epochkit.demo import DigitsClassifier, DigitsDataModule


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="at most; early stopping usually ends it sooner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs", help="directory for TensorBoard logs and checkpoints")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("EPOCHKIT_EXAMPLE_FAST") == "1")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, workers=True)
    # Stop once val_loss has not improved for 3 epochs and end with the weights of its best epoch.
    early_stopping = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    trainer = pl.Trainer(
        max_epochs=2 if args.fast else args.epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(args.root, name="digits"),
        log_every_n_steps=5,
        default_root_dir=args.root,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        # Audit what each epoch really presented (batch[1] holds the labels); warm Adam up over its first epoch,
        # on top of whatever schedule the module configures; stop when val_loss stops improving and keep the best
        # epoch's weights.
        callbacks=[ShuffleAudit(labels=1), LRWarmup(epochs=1), early_stopping],
    )
    model = DigitsClassifier()
    datamodule = DigitsDataModule(seed=args.seed)
    trainer.fit(model, datamodule=datamodule)
    print(
        f"early stopping: {early_stopping.stopping_reason.name} after epoch {trainer.current_epoch - 1};"
        f" restored the weights of epoch {early_stopping.restored_epoch}"
    )
    # Validate again: the module now holds the restored best weights, not those of the last epoch.
    val_acc = float(trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val_acc"])
    print(f"final validation accuracy: {val_acc:.4f}")
    print(f"TensorBoard logs: {trainer.logger.log_dir if trainer.logger else args.root}")
    return val_acc


if __name__ == "__main__":
    main()
