"""Cost of cross-validation's machinery, measured side by side in one run.

1. ``WeightReset.restore`` for a ~100M-parameter model (fp32, ~400 MB) against a plain ``Tensor.copy_`` of the
   same bytes (target: ratio <= 1.5) and against re-instantiating the model; ``verify`` (the checksum) too.
2. The wall time of a K-fold ``CrossValidator`` run of the digits classifier against K independent plain fits of
   the same folds (same Trainer settings, same subsets, interleaved; target: overhead <= 5%).

    .venv/bin/python benchmarks/cv.py [--repeats 3] [--params 100e6] [--folds 3] [--epochs 5] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, median, quiet

from epochkit import CrossValidator, WeightReset
from epochkit.cv.data import FoldDataModule, find_training_dataset
from epochkit.demo import DigitsClassifier, DigitsDataModule


def build(params: float, width: int = 4096) -> nn.Module:
    layers = max(1, round(params / (width * width + width)))
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))


def seconds(fn: object, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return median(samples)


def restore_benchmark(params: float, repeats: int) -> None:
    torch.manual_seed(0)
    model = build(params)
    n_params = sum(p.numel() for p in model.parameters())
    reset = WeightReset()
    reset.snapshot(model)
    nbytes = reset.nbytes
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    t_restore = seconds(lambda: reset.restore(model), repeats)
    t_copy = seconds(lambda: dst.copy_(src), repeats)
    t_verify = seconds(lambda: reset.verify(model), max(1, repeats // 2))
    t_new = seconds(lambda: build(params), max(1, repeats // 2))
    gbps = nbytes / t_restore / 1e9
    print(f"restore of {n_params / 1e6:.1f}M parameters ({nbytes / 1e6:.0f} MB), median of {repeats}:")
    print(f"  WeightReset.restore      {t_restore * 1e3:9.1f} ms  ({gbps:.2f} GB/s)")
    ratio = t_restore / t_copy
    print(f"  plain copy_ same bytes   {t_copy * 1e3:9.1f} ms  -> restore / copy = {ratio:.2f} (target <= 1.5)")
    print(f"  re-instantiate the model {t_new * 1e3:9.1f} ms  -> re-instantiate / restore = {t_new / t_restore:.1f}x")
    print(f"  WeightReset.verify       {t_verify * 1e3:9.1f} ms  (SHA-256 checksum, once per fold)")


TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def cv_benchmark(folds: int, epochs: int, repeats: int, warm_up: bool = True) -> None:
    data = DigitsDataModule(seed=0)
    with tempfile.TemporaryDirectory() as root:
        _cv_benchmark(folds, epochs, repeats, data, Path(root), warm_up)


def _cv_benchmark(folds: int, epochs: int, repeats: int, data: DigitsDataModule, tmp: Path, warm_up: bool) -> None:
    cv_plain = CrossValidator(folds, seed=0, predict=False, verbose=False, resume_checkpoints=False)
    plan = cv_plain.plan(data)
    dataset = find_training_dataset(data)
    runs_done = {"n": 0}
    predict_seconds: list[float] = []

    cpu: dict[str, list[float]] = {}

    def independent() -> float:
        cpu_start, start = time.process_time(), time.perf_counter()
        for k in range(plan.n_splits):
            pl.seed_everything(k, verbose=False)
            fold_data = FoldDataModule(data, dataset, plan.train[k], plan.val[k])
            pl.Trainer(max_epochs=epochs, **TRAINER).fit(DigitsClassifier(), datamodule=fold_data)
        cpu.setdefault("independent fits", []).append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    def cross_validate(name: str, **kwargs: object) -> float:
        runs_done["n"] += 1
        cv = CrossValidator(folds, seed=0, verbose=False, root_dir=tmp / str(runs_done["n"]), **kwargs)  # type: ignore[arg-type]
        cpu_start, start = time.process_time(), time.perf_counter()
        result = cv.fit(DigitsClassifier(), data, trainer_kwargs={"max_epochs": epochs, **TRAINER})
        predict_seconds.extend(f.seconds["predict"] for f in result.folds)
        cpu.setdefault(name, []).append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    times = interleaved(
        {
            "independent fits": independent,
            "CV, lean": lambda: cross_validate("CV, lean", predict=False, resume_checkpoints=False),
            "CV + OOF predict": lambda: cross_validate("CV + OOF predict", resume_checkpoints=False),
            "CV + resume ckpts": lambda: cross_validate("CV + resume ckpts", predict=False),
            "CV, defaults": lambda: cross_validate("CV, defaults"),
        },
        repeats,
        warm_up,
    )
    base = median(times["independent fits"])
    base_cpu = median(cpu["independent fits"][-repeats:])
    print(
        f"\n{folds}-fold digits, {epochs} epochs per fold, median of {repeats} interleaved runs (wall time; CPU time of"
        " this process, which the machine's other load does not inflate):"
    )
    for name, values in times.items():
        wall, cpu_s = median(values), median(cpu[name][-repeats:])
        print(
            f"  {name:17s} {wall:7.2f} s  ({(wall / base - 1) * 100:+5.1f}%,"
            f" {(wall - base) / folds * 1e3:+6.0f} ms a fold)"
            f"   CPU {cpu_s:6.2f} s ({(cpu_s - base_cpu) / folds * 1e3:+5.0f} ms a fold)"
        )
    if predict_seconds:
        print(f"  out-of-fold predictions, measured inside each fold: {median(predict_seconds) * 1e3:.1f} ms per fold")
    print(
        "  (lean: no out-of-fold predictions, no per-epoch resume checkpoint; defaults add both, as separate work "
        "the independent fits do not do. Target for the CV machinery itself: <= 5%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="every part, tiny (a smoke run: seconds)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.params, args.folds, args.epochs = 1, 1e6, 2, 1
    quiet()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("epochkit").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {math.ceil(args.params / 1e6)}M target")
    restore_benchmark(args.params, max(3, args.repeats * 2))
    cv_benchmark(args.folds, args.epochs, args.repeats, warm_up=not args.quick)


if __name__ == "__main__":
    main()
