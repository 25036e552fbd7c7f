"""ShuffleAudit's cost, measured side by side in one run.

1. Per-step overhead on the digits example: the same fit with and without the audit, interleaved (alternating which
   goes first), one torch thread; the per-step time of an epoch runs from ``on_train_epoch_start`` to the last
   ``on_train_batch_end`` (data loading, index recording and the per-batch hook included; the epoch-end analysis
   is reported on its own). Medians over epochs 1.. of every repeat. Target: ratio <= 1.03. On a shared, loaded
   machine whole-fit timings swing by more than 3% between runs (either way), so the audit's own per-batch work
   (the recorder and the per-batch hook on the same sampler, no training) is also timed in isolation as the
   minimum over repeats, and expressed as a share of the training step.
2. The epoch-end analysis for N = 10,000,000 samples (batches of 64, 10 classes): the callback's own code on a
   recorded epoch compared with the previous one, timed, with the peak memory it allocates (tracemalloc sees numpy
   buffers), including the recorded indices and the record kept for the next epoch. It covers every statistic the
   verdict uses, the streaming ones included (footrule displacement, batches identical as sets, reversed
   successors), the order digest of the full stream, and the rendering of the order and label maps, each also
   timed on its own. Targets: <= 2 s, <= 400 MB.

Run: ``.venv/bin/python benchmarks/shuffle_audit.py`` (``--repeats``, ``--samples`` to change the sizes;
``--quick``: every part, tiny, in seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit
import tracemalloc
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from epochkit import ShuffleAudit
from epochkit.audit import functional as F
from epochkit.audit import images
from epochkit.audit.callback import _Loader, _small_ints
from epochkit.audit.digests import order_digest
from epochkit.audit.recording import RecordingSampler, describe_loader
from epochkit.audit.verdicts import judge_epoch
from epochkit.demo import DigitsClassifier, DigitsDataModule


class _StepTimer(pl.Callback):
    """CPU time of this process (``time.process_time``, one torch thread: the machine's other load is not counted)
    from one batch start to the next within an epoch: a training step, the fetch of the next batch (the audit's
    recorder) and the per-batch hooks. Each epoch's first interval (it carries the epoch's fixed costs: the loader's
    iterator, the audit's epoch start) and the epoch end (the audit's analysis) are kept apart."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epoch_start: list[float] = []
        self.epoch_end: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.process_time()
        self._previous: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.process_time()
        if self._previous is None:
            self.epoch_start.append(now - self._start)
        else:
            self.steps.append(now - self._previous)
        self._previous = now

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._last = time.process_time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_end.append(time.process_time() - self._last)


def _digits_fit(audit: bool, epochs: int) -> _StepTimer:
    pl.seed_everything(0, verbose=False)
    timer = _StepTimer()
    callbacks: list[pl.Callback] = [ShuffleAudit(on_issue="log", labels=1), timer] if audit else [timer]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=tempfile.gettempdir(),
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return timer


def overhead(repeats: int, epochs: int, number: int) -> None:
    base: list[float] = []
    audited: list[float] = []
    start_base: list[float] = []
    start_audit: list[float] = []
    end_base: list[float] = []
    end_audit: list[float] = []
    for r in range(repeats):
        for audit in (False, True) if r % 2 == 0 else (True, False):
            timer = _digits_fit(audit, epochs)
            (audited if audit else base).extend(timer.steps)
            (start_audit if audit else start_base).extend(timer.epoch_start[1:])
            (end_audit if audit else end_base).extend(timer.epoch_end[1:])
    b, a = statistics.median(base), statistics.median(audited)
    print(
        f"digits, {repeats} interleaved repeats x {epochs} epochs, 23 steps an epoch; CPU time of this process "
        "(process_time), medians:"
    )
    print(f"  a step without audit: {b * 1e3:.3f} ms   with audit: {a * 1e3:.3f} ms   ratio: {a / b:.3f}")
    extra_start = statistics.median(start_audit) - statistics.median(start_base)
    extra_end = statistics.median(end_audit) - statistics.median(end_base)
    print(
        f"  per epoch, apart from the steps: epoch start to first batch {extra_start * 1e3:+.2f} ms, epoch-end "
        f"analysis of 1,437 samples {extra_end * 1e3:+.2f} ms"
    )
    extra_per_batch = per_batch_cost(repeats, number)
    print(f"  => the audit's per-step cost is {extra_per_batch / b:.2%} of a training step (target <= 1%)")


def per_batch_cost(repeats: int, number: int = 100) -> float:
    """The audit's own per-batch work in isolation, as the minimum over repeats (robust to a loaded machine): the
    digits train sampler iterated with and without the recorder, plus the audit's per-batch hook."""
    loader = DigitsDataModule()
    loader.setup("fit")
    batch_sampler = loader.train_dataloader().batch_sampler
    recorder = RecordingSampler(batch_sampler, batched=True)
    audit = ShuffleAudit(labels=1)
    audit._reset_state()
    slot = _Loader(None, (), loader, recorder)
    slot.labels_array = np.zeros(1, np.int16)  # labels come from the data set: no per-batch label work
    audit._loaders_ = [slot]

    def plain() -> None:
        for _ in batch_sampler:
            pass

    def recorded() -> None:
        for i, _ in enumerate(recorder):
            audit.on_train_batch_start(None, None, None, i)  # type: ignore[arg-type]

    batches = len(batch_sampler)
    cost = {
        f: min(timeit.repeat(f, number=number, repeat=max(repeats, 5))) / number / batches for f in (plain, recorded)
    }
    extra = cost[recorded] - cost[plain]
    print(f"  recorder + per-batch hook, min of {max(repeats, 5)} repeats: +{extra * 1e6:.2f} us a batch")
    return extra


def _recorded_epoch(perm: np.ndarray, batch: int) -> RecordingSampler:
    """What the recorder holds after a sampler yielded ``perm`` in batches (the sampler's lists, then packed)."""
    recorder = RecordingSampler(None, batched=True)
    sink = recorder.sink
    for start in range(0, perm.size, batch):
        sink.append(perm[start : start + batch].tolist())
    return recorder


def analysis(n: int, batch: int, max_samples: int | None) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    audit = ShuffleAudit(on_issue="log", labels=labels, max_samples=max_samples)
    audit._reset_state()
    loader = DataLoader(
        TensorDataset(torch.empty(n, 0)), batch_sampler=BatchSampler(RandomSampler(range(n)), batch, False)
    )
    configs = [describe_loader(loader)]
    audit.configs_ = {"train_dataloader": configs}
    slot = _Loader(None, (), loader)
    slot.labels_array = _small_ints(labels)  # as the callback holds labels given by id
    audit._loaders_ = [slot]
    audit._steps_ = -(-n // batch)
    perms = [rng.permutation(n), rng.permutation(n)]

    tracemalloc.start()
    times, cpu = [], []
    previous = previous_epoch = None
    records = []
    for epoch, perm in enumerate(perms):
        slot.recorder = _recorded_epoch(perm, batch)  # recording happens during the epoch, not timed here
        start, start_cpu = time.perf_counter(), time.process_time()
        payload = audit._local_payload(trainer, slot)
        verdict, record = judge_epoch(epoch, [payload], configs, previous, previous_epoch, order_map=True)
        if verdict.order_map is not None:  # what the callback draws for TensorBoard on rank 0
            images.render_order_map(verdict.order_map)
        if payload.label_table is not None:
            images.render_label_map(images.label_map(payload.label_table))
        previous, previous_epoch = record, epoch
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        records.append(record)
        del payload
        slot.recorder = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    label = "all samples" if max_samples is None else f"max_samples={max_samples:,}"
    print(f"N = {n:,}, batches of {batch}, {label}:")
    print(
        f"  epoch-end analysis (epoch 1 vs epoch 0): {times[1]:.2f} s wall, {cpu[1]:.2f} s CPU   peak memory of the "
        f"audit: {peak / 2**20:.0f} MB"
    )
    print(f"  findings: {[f.code for f in verdict.findings] or 'none'}; metrics: " + ", ".join(
        f"{k}={v:.3f}" for k, v in verdict.metrics.items()))  # fmt: skip
    parts(n, batch, perms[1], records[0], records[1])


def parts(n: int, batch: int, perm: np.ndarray, before: Any, after: Any) -> None:
    """The order statistics, the thresholds, the digest and the order map on their own, on what the callback uses:
    the two kept records (the full epoch for the digest)."""
    timed: dict[str, float] = {}
    start = time.perf_counter()
    stats = F.order_stats(before.ids, before.batches, after.ids, after.batches, before.successors, after.successors)
    timed["order statistics (Spearman, footrule, co-batch pairs, identical batches, successors)"] = (
        time.perf_counter() - start
    )
    start = time.perf_counter()
    F.displacement_flagged(stats.footrule, stats.shared), F.batches_replayed(stats), F.order_replayed(stats)
    F.cobatch_flagged(stats)
    timed["replay and block-shuffle thresholds"] = time.perf_counter() - start
    start = time.perf_counter()
    order_digest(perm, np.full(-(-n // batch), batch))
    timed[f"order digest of the full stream ({n:,} ids)"] = time.perf_counter() - start
    start = time.perf_counter()
    images.render_order_map(images.order_map(before.ids, after.ids))
    timed[f"order map of the kept records on its own ({after.ids.size:,} ids; the callback reuses the ranks)"] = (
        time.perf_counter() - start
    )
    for what, seconds in timed.items():
        print(f"    {what}: {seconds * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="every part, tiny (a smoke run: seconds)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs, args.samples = 1, 2, 20_000
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    overhead(args.repeats, args.epochs, 5 if args.quick else 100)
    analysis(args.samples, 64, max_samples=ShuffleAudit().max_samples)
    if ShuffleAudit().max_samples is not None:
        analysis(args.samples, 64, max_samples=None)


if __name__ == "__main__":
    main()
