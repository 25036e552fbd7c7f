"""A realistic shuffle bug that trains without any error, caught by ``ShuffleAudit``, then fixed.

The bug: a custom sampler draws its permutation once, in ``__init__``, and has no ``set_epoch``; Lightning cannot
reseed it, so every epoch presents the digits in exactly the same order. Nothing fails and the accuracy looks fine.
The audit records the indices the sampler really yielded and reports, at the end of epoch 1,
``order identical to epoch 0: Spearman 1.000`` with the fix. The fixed sampler reseeds from the epoch.

TensorBoard shows it too: the *order map* (each sample's position this epoch against the previous one) of the buggy
run is a diagonal, the fixed run's is noise; the *label map* shows each batch's classes. The last
of each is read back from the event files and saved as PNG files under ``--root``/png, or ``--png DIR`` (the
README's pictures: ``--png docs/images``).

Run: ``python examples/shuffle_bug.py`` (``--fast`` for a short run; logs and JSON reports under ``--root``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Sampler

from epochkit import ShuffleAudit
from epochkit.demo import DigitsClassifier, DigitsDataModule


class OnceShuffledSampler(Sampler[int]):
    """The bug: shuffles once and never again."""

    def __init__(self, n: int, seed: int) -> None:
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class EpochSeededSampler(Sampler[int]):
    """The fix: a fresh permutation every epoch, seeded from (seed, epoch); Lightning calls ``set_epoch``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class DigitsWithSampler(DigitsDataModule):
    def __init__(self, fixed: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fixed = fixed

    def train_dataloader(self) -> DataLoader:
        n = len(self.train_set)
        sampler = EpochSeededSampler(n, self.seed) if self.fixed else OnceShuffledSampler(n, self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)


def run(fixed: bool, epochs: int, root: str) -> ShuffleAudit:
    pl.seed_everything(0, workers=True)
    audit = ShuffleAudit(on_issue="log", labels=1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(root, name="shuffle_fixed" if fixed else "shuffle_bug"),
        callbacks=[audit],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsWithSampler(fixed=fixed))
    label = "fixed sampler" if fixed else "buggy sampler"
    issues = [f for v in audit.verdicts_ for f in v.issues]
    print(f"{label}: val_acc {float(trainer.callback_metrics['val_acc']):.4f}, {len(issues)} issue(s)")
    for finding in issues[:1]:
        print(f"  {finding.message()}")
    return audit


def save_pictures(root: str, out: Path) -> list[Path]:
    """The last order map of both runs and the fixed run's last label map, read back from the TensorBoard event
    files with TensorBoard's ``EventAccumulator``, written as PNG files into ``out``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run_name, tag, name in (
        ("shuffle_bug", "shuffle_audit/order_map", "order_map_bug.png"),
        ("shuffle_fixed", "shuffle_audit/order_map", "order_map_fixed.png"),
        ("shuffle_fixed", "shuffle_audit/label_map", "label_map_fixed.png"),
    ):
        events = sorted(Path(root, run_name).glob("version_*"))[-1]
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        (out / name).write_bytes(accumulator.Images(tag)[-1].encoded_image_string)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs", help="directory for TensorBoard logs and the JSON reports")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("EPOCHKIT_EXAMPLE_FAST") == "1")
    parser.add_argument("--png", type=Path, default=None, help="where to save the order and label maps (<root>/png)")
    args = parser.parse_args(argv)
    epochs = 2 if args.fast else 5
    buggy = run(fixed=False, epochs=epochs, root=args.root)
    assert any(f.code == "order_unchanged" for v in buggy.verdicts_ for f in v.issues), "the audit missed the bug"
    fixed = run(fixed=True, epochs=epochs, root=args.root)
    assert not any(v.issues for v in fixed.verdicts_), "the fixed run was flagged"
    for path in save_pictures(args.root, args.png if args.png is not None else Path(args.root) / "png"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
