"""5-fold cross-validation of the digits classifier with all of epochkit: this is what ``make demo`` runs.

``epochkit.CrossValidator`` gives every fold a fresh Trainer, its own copies of the callbacks, a verified weight
reset and its own TensorBoard run. In every fold ``ShuffleAudit`` checks what each epoch really presented,
``LRWarmup`` warms Adam up over the first epoch and ``EarlyStopping`` stops once ``val_loss`` stalls and restores
the best epoch's weights. It prints a line per fold, the table (every metric at each fold's last epoch, its best
epoch and for the model the fold kept, with mean, std and the Student-t 95% interval of the mean), where the results
are and the command to look at the runs, and nothing per epoch. Then it trains the model to ship: once on all the
folds' data, for the median of the epochs the folds kept (``CrossValidator.refit``), and prints one line.
``--resume`` keeps the folds (and the refit) a previous run with the same ``--root`` finished (an interrupted fold
resumes); without it the CV starts over.

    python examples/cv_digits.py [--folds 5] [--epochs 30] [--root runs] [--resume] [--fast]

``--fast`` (or ``EPOCHKIT_EXAMPLE_FAST=1``) runs 2 folds of 1 short epoch, for tests. On several GPUs, pass
``strategy="ddp", devices=N`` in ``trainer_kwargs`` and start the script once: every rank runs the same folds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from epochkit import CrossValidator, EarlyStopping, LRWarmup, ShuffleAudit
from epochkit.demo import DigitsClassifier, DigitsDataModule


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="at most; early stopping usually ends a fold sooner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs", help="directory for the CV's logs, checkpoints and results")
    parser.add_argument("--resume", action="store_true", help="keep the folds a previous run finished")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("EPOCHKIT_EXAMPLE_FAST") == "1")
    args = parser.parse_args(argv)

    root = Path(args.root) / "cv_digits"
    pl.seed_everything(args.seed, workers=True, verbose=False)  # the same starting weights in every run
    cv = CrossValidator(
        n_splits=2 if args.fast else args.folds,
        stratify=True,  # labels come from the TensorDataset's last tensor
        seed=args.seed,
        root_dir=root,
        overwrite=not args.resume,
    )
    model, data = DigitsClassifier(), DigitsDataModule(seed=args.seed)
    result = cv.fit(
        model,
        data,
        trainer_kwargs={
            "max_epochs": 1 if args.fast else args.epochs,
            **({"limit_train_batches": 5} if args.fast else {}),
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 5,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            # Deep-copied for every fold; ModelCheckpoint writes to root/fold_k/checkpoints.
            "callbacks": [
                ShuffleAudit(labels=1),  # batch[1] holds the labels
                LRWarmup(epochs=1),
                EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
                ModelCheckpoint(monitor="val_acc", mode="max"),
            ],
        },
    )
    # CrossValidator printed a line per fold, the table and where the results are.
    mean_acc = result.mean("val_acc")  # of the models the folds kept (restored by EarlyStopping)
    print(f"mean validation accuracy of the {len(result.folds)} fold models: {mean_acc:.4f}")
    # The model to ship: trained once on all the folds' data for the median of the epochs the folds kept, with the
    # same settings (EarlyStopping and the val_acc checkpoint are left out: no validation data is left).
    cv.refit(model, data)  # prints one line; root/final/model.pt, root/final/refit.json
    return mean_acc


if __name__ == "__main__":
    main()
