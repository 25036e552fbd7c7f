"""The 5-fold cross-validation of the digits classifier, with the folds side by side on Ray.

``CrossValidator(..., executor=RayExecutor(...))`` runs each fold as a Ray task: on a Ray started here and sized to
this machine, or on the cluster ``--address`` (or ``RAY_ADDRESS``) names, e.g. one started with ``ray start --head``.
Every fold trains on one CPU (one torch thread) and the driver shows a bar over the folds; the results, the files in
``--root`` and the table are those of ``examples/cv_digits.py``'s sequential loop with the same settings. On a
cluster, ``--root`` must be a directory every node sees at the same path (checked before any fold runs).

    pip install "epochkit[ray]"
    python examples/cv_ray.py [--folds 5] [--epochs 30] [--concurrent 2] [--address auto] [--root runs] [--fast]

``--fast`` (or ``EPOCHKIT_EXAMPLE_FAST=1``) runs 2 folds of 1 short epoch, for tests.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl

from epochkit import CrossValidator, EarlyStopping
from epochkit.cv import RayExecutor
from epochkit.demo import DigitsClassifier, DigitsDataModule


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="at most; early stopping usually ends a fold sooner")
    parser.add_argument("--concurrent", type=int, default=None, help="at most this many folds at once")
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: RAY_ADDRESS, else local)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs", help="directory for the CV's logs, checkpoints and results")
    parser.add_argument("--resume", action="store_true", help="keep the folds a previous run finished")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("EPOCHKIT_EXAMPLE_FAST") == "1")
    args = parser.parse_args(argv)

    root = Path(args.root).absolute() / "cv_ray"  # the Ray workers run in another working directory
    pl.seed_everything(args.seed, workers=True, verbose=False)  # the same starting weights in every run
    cv = CrossValidator(
        n_splits=2 if args.fast else args.folds,
        stratify=True,
        seed=args.seed,
        root_dir=root,
        overwrite=not args.resume,
        executor=RayExecutor(address=args.address, cpus_per_fold=1, max_concurrent=args.concurrent),
    )
    result = cv.fit(
        DigitsClassifier(),
        DigitsDataModule(seed=args.seed),
        trainer_kwargs={
            "max_epochs": 1 if args.fast else args.epochs,
            **({"limit_train_batches": 5} if args.fast else {}),
            "accelerator": "cpu",  # gpus_per_fold=1 and accelerator="gpu" train each fold on its own GPU
            "log_every_n_steps": 5,
            "enable_model_summary": False,
            "callbacks": [EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)],
        },
    )
    mean_acc = result.mean("val_acc")  # of the models the folds kept
    where = sorted({f"{f.worker.get('node_ip')} pid {f.worker.get('pid')}" for f in result.folds})
    n = len(result.folds)
    print(f"mean validation accuracy of the {n} fold models: {mean_acc:.4f} (ran on {', '.join(where)})")
    return mean_acc


if __name__ == "__main__":
    main()
