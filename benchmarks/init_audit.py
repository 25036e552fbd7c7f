"""InitAudit's cost, measured side by side in one run.

1. The whole check against the digits example's first epoch: the same one-epoch fit with and without
   ``InitAudit()`` (symmetric units at step 0 and step 10, dead-unit hooks until step 10 or through the epoch),
   interleaved, one torch thread, medians over repeats; and the audit's own time, summed over its Lightning hooks and
   its forward hooks (timed from inside, so machine noise between fits does not hide it), less the timers' own cost,
   as a share of the first epoch, on the wall clock and on the thread's CPU time (which a loaded machine does not
   inflate by descheduling the thread inside short timed intervals). The digits epoch is short (23 batches), so the
   fixed cost of the step-0 check weighs most. Target: under 1%.
2. A 100M-parameter model on the CPU (six ``Linear(4096, 4096)``, torch's default init): the check at step 0
   (``find_identical_units``, which also covers a step-``steps`` look with no group left to compare), next to one
   plain read of every weight (``weight.sum()``) as the memory floor, medians over repeats. Target: under 50 ms.
   Also the worst case, for information: the same model zero-initialised (every unit in one group, compared
   exactly at step 0 and again after the steps).

Run: ``.venv/bin/python benchmarks/init_audit.py`` (about a minute on 2 CPU cores); ``--quick``: a few seconds;
``--digits-only``: part 1 alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from _common import digits_fit_seconds, interleaved, median, quiet
from torch import nn

from epochkit import InitAudit
from epochkit.init_audit.symmetry import find_identical_units, still_identical


class TimedInitAudit(InitAudit):
    """InitAudit, with the time spent in its Lightning hooks and forward hooks summed in ``spent`` and the first
    epoch's in ``epoch_seconds``, on two clocks: the wall clock and the thread's CPU time (``time.thread_time``: the
    time this thread ran, which a loaded machine does not inflate by descheduling it; one torch thread does all the
    work). ``intervals`` counts the timed intervals, whose own timer cost :func:`timer_cost` estimates."""

    def __init__(self) -> None:
        super().__init__()
        self.spent = {"wall": 0.0, "cpu": 0.0}
        self.epoch_seconds = {"wall": 0.0, "cpu": 0.0}
        self.intervals = 0
        self._epoch_start = (0.0, 0.0)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args)
        finally:
            self.spent["cpu"] += time.thread_time() - cpu
            self.spent["wall"] += time.perf_counter() - wall
            self.intervals += 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._epoch_start = (time.perf_counter(), time.thread_time())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._timed(super().on_train_start, trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._timed(super().on_train_batch_end, trainer, pl_module, *args)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._timed(super().on_train_epoch_end, trainer, pl_module)
        if trainer.current_epoch == 0:
            self.epoch_seconds = {
                "wall": time.perf_counter() - self._epoch_start[0],
                "cpu": time.thread_time() - self._epoch_start[1],
            }

    def _make_hook(self, trainer: pl.Trainer, *args: Any) -> Any:
        hook = super()._make_hook(trainer, *args)
        return lambda *hook_args: self._timed(hook, *hook_args)


def timer_cost(repeats: int = 2000) -> dict[str, float]:
    """What one timed interval of :class:`TimedInitAudit` around nothing costs (median of ``repeats``; taken from a
    warm loop, so an underestimate inside a fit: subtracting it flatters nothing)."""
    probe = TimedInitAudit()
    costs: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeats):
        before = dict(probe.spent)
        probe._timed(lambda: None)
        for clock in costs:
            costs[clock].append(probe.spent[clock] - before[clock])
    return {clock: median(values) for clock, values in costs.items()}


def bench_digits(repeats: int) -> None:
    audits: list[TimedInitAudit] = []

    def with_audit() -> float:
        audits.append(TimedInitAudit())
        return digits_fit_seconds([audits[-1]], epochs=1)

    times = interleaved({"without": lambda: digits_fit_seconds([], epochs=1), "with": with_audit}, repeats)
    without, with_ = median(times["without"]), median(times["with"])
    measured = audits[-repeats:]  # not the one of the discarded warm-up round
    cost = timer_cost()
    print(f"1. digits, one-epoch fit (medians of {repeats}, one torch thread)")
    print(f"   fit without InitAudit {without * 1e3:8.1f} ms, with {with_ * 1e3:8.1f} ms: ratio {with_ / without:.3f}")
    intervals = median([a.intervals for a in measured])
    for clock, name in (("wall", "wall clock"), ("cpu", "thread CPU time")):
        spent = median([a.spent[clock] for a in measured])
        own = median([a.spent[clock] - a.intervals * cost[clock] for a in measured])
        epoch = median([a.epoch_seconds[clock] for a in measured])
        print(
            f"   {name}: InitAudit's own time {own * 1e3:.2f} ms of a first epoch of {epoch * 1e3:.1f} ms: "
            f"{own / epoch:.2%} (median; target < 1%); as timed {spent * 1e3:.2f} ms ({spent / epoch:.2%}), less "
            f"{intervals:.0f} timed intervals x {cost[clock] * 1e6:.2f} us of timer"
        )


def bench_100m(repeats: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(6)])
    params = sum(p.numel() for p in net.parameters())

    def read_all() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for layer in net:
                layer.weight.sum()
        return time.perf_counter() - start

    def check() -> float:
        start = time.perf_counter()
        still_identical(net, find_identical_units(net))
        return time.perf_counter() - start

    times = interleaved({"read": read_all, "check": check}, repeats)
    print(f"2. {params / 1e6:.1f}M parameters on the CPU (six Linear(4096, 4096), medians of {repeats})")
    print(
        f"   check {median(times['check']) * 1e3:.1f} ms (target < 50 ms); one read of every weight "
        f"{median(times['read']) * 1e3:.1f} ms; ratio {median(times['check']) / median(times['read']):.2f}"
    )
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    start = time.perf_counter()
    groups = find_identical_units(net)
    found = time.perf_counter() - start
    start = time.perf_counter()
    still = still_identical(net, groups)
    again = time.perf_counter() - start
    print(
        f"   worst case, all zero ({sum(len(g.groups) for g in still)} groups still identical): "
        f"step 0 {found * 1e3:.0f} ms, after the steps {again * 1e3:.0f} ms (once per fit)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a few seconds)")
    parser.add_argument("--digits-only", action="store_true", help="part 1 only (the digits epoch)")
    args = parser.parse_args()
    quiet()
    bench_digits(repeats=2 if args.quick else 7)
    if not args.digits_only:
        bench_100m(repeats=3 if args.quick else 9)


if __name__ == "__main__":
    main()
