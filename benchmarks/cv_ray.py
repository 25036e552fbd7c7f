"""Folds side by side on Ray against the sequential loop, measured in one run.

4 folds of the digits classifier (a wide hidden layer and enough epochs for at least 5 s a fold), one torch thread
per fold, on this machine: ``CrossValidator`` in-process against ``CrossValidator(executor=RayExecutor(
max_concurrent=2))`` on a local Ray with ``--cpus`` CPUs (default 2). Prints the wall time of each, interleaved
``--repeats`` times, and their ratio (target on 2 CPUs: <= 0.65) with its spread; Ray's start-up (``ray.init``,
not in the ratio: a cluster is started once for many runs); and Ray's per-fold overhead: the Ray run's wall time
minus the ideal (the folds' own seconds, as each task measured them, divided over the concurrent slots), per fold.

    .venv/bin/python benchmarks/cv_ray.py [--repeats 2] [--epochs 30] [--hidden 1024] [--cpus 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, quiet

from epochkit import CrossValidator
from epochkit.cv import CVResult, RayExecutor
from epochkit.demo import DigitsClassifier, DigitsDataModule

FOLDS = 4


def run_cv(
    root: Path, epochs: int, hidden: int, executor: RayExecutor | None, folds: int = FOLDS
) -> tuple[float, CVResult]:
    pl.seed_everything(0, verbose=False)
    cv = CrossValidator(folds, root_dir=root, overwrite=True, verbose=False, executor=executor)
    start = time.perf_counter()
    result = cv.fit(
        DigitsClassifier(hidden=hidden),
        DigitsDataModule(batch_size=32),
        trainer_kwargs={
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    )
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--quick", action="store_true", help="every part, tiny (a smoke run: seconds)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs, args.hidden, args.folds = 1, 1, 16, 2
    quiet()  # one torch thread in this process: the sequential folds use one thread, as each Ray task does
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    with tempfile.TemporaryDirectory(prefix="ekb-", dir="/tmp") as tmp:
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=str(Path(tmp) / "ray"), log_to_driver=False)
        startup = time.perf_counter() - start
        try:
            executor = RayExecutor(cpus_per_fold=1, max_concurrent=2, progress=False)
            if not args.quick:
                run_cv(Path(tmp) / "warm", 1, args.hidden, executor)  # warm-up: Ray's worker processes import torch
            seq: list[float] = []
            par: list[float] = []
            overhead: list[float] = []
            fold_seconds: list[float] = []
            ray_fold_seconds: list[float] = []
            load_before = os.getloadavg()[0]
            for _ in range(args.repeats):
                t, result = run_cv(Path(tmp) / "seq", args.epochs, args.hidden, None, args.folds)
                seq.append(t)
                fold_seconds += [f.seconds["total"] for f in result.folds]
                t, result = run_cv(Path(tmp) / "ray", args.epochs, args.hidden, executor, args.folds)
                par.append(t)
                ray_fold_seconds += [f.seconds["total"] for f in result.folds]
                ideal = sum(f.seconds["total"] for f in result.folds) / 2
                overhead.append((t - ideal) / args.folds)
            load_after = os.getloadavg()[0]
        finally:
            ray.shutdown()
    ratios = [p / s for p, s in zip(par, seq, strict=True)]
    print(
        f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs seen, Ray given {args.cpus}; load "
        f"average {load_before:.1f} before, {load_after:.1f} after (above {args.cpus}: other processes share the CPUs)"
    )
    print(
        f"{args.folds} folds, {args.epochs} epochs, hidden {args.hidden}; fold seconds (sequential): "
        f"{min(fold_seconds):.1f}-{max(fold_seconds):.1f} (target >= 5)"
    )
    print(
        f"a fold's own seconds: {median(fold_seconds):.1f} sequential, {median(ray_fold_seconds):.1f} on Ray "
        "(two at once: the ratio of these is what sharing the CPUs costs each fold)"
    )
    print(f"sequential: {median(seq):.1f} s (runs {', '.join(f'{t:.1f}' for t in seq)})")
    print(f"RayExecutor(max_concurrent=2): {median(par):.1f} s (runs {', '.join(f'{t:.1f}' for t in par)})")
    print(f"ratio ray/sequential: {median(ratios):.2f} (runs {', '.join(f'{r:.2f}' for r in ratios)}; target <= 0.65)")
    print(
        f"Ray start-up (ray.init): {startup:.1f} s; per-fold overhead: {median(overhead):.2f} s "
        f"(runs {', '.join(f'{o:.2f}' for o in overhead)})"
    )


if __name__ == "__main__":
    main()
