"""What ShuffleAudit adds to a mid-epoch checkpoint: the cut epoch's partial record (ids consumed before the cut, in
order, int32, and the batch sizes; see ``epochkit.audit.resume``), for N = 1M and 10M samples, cut half-way and at
the last batch. Size, ``torch.save`` and ``torch.load`` times, each beside the same for a float32 weight tensor of N
parameters saved in the same run (the ratio is what to quote; a model of N parameters is the yardstick).

    .venv/bin/python benchmarks/resume_state.py            # N = 1M and 10M, median of 5
    .venv/bin/python benchmarks/resume_state.py --quick    # N = 100k and 1M, median of 3 (a few seconds)
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from epochkit.audit.resume import pack_partial, unpack_partial

BATCH = 256


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _save_load(state: Any, repeats: int) -> tuple[int, float, float]:
    def save() -> bytes:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    save_s, blob = _timed(save, repeats)
    load_s, _ = _timed(lambda: torch.load(io.BytesIO(blob), weights_only=True), repeats)
    return len(blob), save_s, load_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100k and 1M, 3 repeats")
    args = parser.parse_args()
    sizes = (100_000, 1_000_000) if args.quick else (1_000_000, 10_000_000)
    repeats = 3 if args.quick else 5
    print(
        f"{'N':>11} {'cut':>6} {'partial MB':>10} {'B/sample':>8} {'save s':>7} {'load s':>7} {'unpack s':>8} "
        f"{'size/weights':>12} {'save/weights':>12}"
    )
    rng = np.random.default_rng(0)
    for n in sizes:
        order = rng.permutation(n)
        weights_state = {"weight": torch.zeros(n, dtype=torch.float32)}  # N float32 parameters: the yardstick
        w_bytes, w_save, _ = _save_load(weights_state, repeats)
        for cut in (0.5, 1.0):
            consumed = int(n * cut) // BATCH * BATCH
            sizes_arr = np.full(consumed // BATCH, BATCH)
            state = {"partial": {"train_dataloader": pack_partial(1, order[:consumed], sizes_arr)}}
            size, save_s, load_s = _save_load(state, repeats)
            unpack_s, _ = _timed(lambda s=state: unpack_partial(s["partial"]["train_dataloader"]), repeats)
            print(
                f"{n:>11,} {cut:>6.0%} {size / 1e6:>10.1f} {size / n:>8.2f} {save_s:>7.3f} {load_s:>7.3f} "
                f"{unpack_s:>8.3f} {size / w_bytes:>12.2f} {save_s / w_save:>12.2f}"
            )


if __name__ == "__main__":
    main()
