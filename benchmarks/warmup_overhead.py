"""Per-step overhead of LRWarmup on the digits example, as a ratio against the same fit without it.

Measured in one run, interleaved: the plain fit, the fit with a warmup that lasts the whole run (the worst case:
the hooks run on every step), and the fit with a short warmup (the usual case: hooks removed after it). Also the
cost of the hooks alone around one ``optimizer.step()``. Target: <= 2% on the digits example.

    .venv/bin/python benchmarks/warmup_overhead.py [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import digits_fit_seconds, interleaved, median, quiet

from epochkit import LRWarmup

EPOCHS = 10
STEPS_PER_EPOCH = 23  # 1437 training samples / batch 64


def hook_microseconds(n: int = 20_000) -> tuple[float, float]:
    """Median time of one SGD step on a tiny model, without and with the warmup's hooks (still warming up), each
    step timed on its own, in interleaved blocks of 100 steps."""
    param = torch.nn.Parameter(torch.zeros(64))
    param.grad = torch.ones(64)
    plain = torch.optim.SGD([param], lr=0.1)
    hooked = torch.optim.SGD([param], lr=0.1)
    length = 10 * n  # longer than the measurement: every step is a warmup step
    warmup = LRWarmup(steps=length)
    warmup.setup(None, None, "fit")  # type: ignore[arg-type]  # the hooks need only the per-fit state
    warmup.steps_applied_, warmup.warmup_steps_, warmup.group_starts_ = [0], [[length]], [[0]]
    warmup._ends = [length]
    hooked.register_step_pre_hook(partial(warmup._before_step, 0))
    hooked.register_step_post_hook(partial(warmup._after_step, 0))
    # Each step timed on its own and the median taken: on a shared machine a block of steps absorbs the odd
    # preemption of several milliseconds, which swamps a cost of microseconds. Blocks of 100 steps alternate between
    # the two optimizers (which goes first alternates too), so that drift in the machine's load hits both alike.
    clock = time.perf_counter
    samples: dict[torch.optim.Optimizer, list[float]] = {plain: [], hooked: []}
    for b in range(max(2, n // 100)):
        for opt in (plain, hooked) if b % 2 == 0 else (hooked, plain):
            times = samples[opt]
            for _ in range(100):
                start = clock()
                opt.step()
                times.append((clock() - start) * 1e6)
    return median(samples[plain]), median(samples[hooked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="every part, tiny (a smoke run: seconds)")
    args = parser.parse_args()
    epochs = 1 if args.quick else EPOCHS
    steps = epochs * STEPS_PER_EPOCH
    if args.quick:
        args.repeats = 1
    quiet()
    warnings.filterwarnings("ignore")
    times = interleaved(
        {
            "plain": lambda: digits_fit_seconds([], epochs),
            "warmup_whole_run": lambda: digits_fit_seconds([LRWarmup(steps=steps)], epochs),
            "warmup_one_epoch": lambda: digits_fit_seconds([LRWarmup(epochs=1)], epochs),
        },
        args.repeats,
        warm_up=not args.quick,
    )
    base = median(times["plain"])
    print(f"digits fit, {epochs} epochs ({steps} optimizer steps), median of {args.repeats} interleaved runs:")
    for name, values in times.items():
        ratio = median(values) / base
        print(
            f"  {name:<18} {median(values):7.3f} s   ratio vs plain {ratio:6.3f}   overhead {100 * (ratio - 1):+5.1f}%"
        )
    plain_us, hooked_us = hook_microseconds(1_000 if args.quick else 20_000)
    print(
        f"one SGD step on 64 parameters: {plain_us:.2f} us plain, {hooked_us:.2f} us with the warmup hooks "
        f"(+{hooked_us - plain_us:.2f} us a step)"
    )


if __name__ == "__main__":
    main()
