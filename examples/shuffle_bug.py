"""A realistic shuffle bug that trains without any error, caught by ``ShuffleAudit``, then fixed.

The bug: a custom sampler draws its permutation once, in ``__init__``, and has no ``set_epoch``; Lightning cannot
reseed it, so every epoch presents the digits in exactly the same order. Nothing fails and the accuracy looks fine.
The audit records the indices the sampler really yielded and reports, at the end of epoch 1,
``order identical to epoch 0: Spearman 1.000`` with the fix. The fixed sampler reseeds from the epoch.

Run: ``python examples/shuffle_bug.py`` (``--fast`` for a short run; logs and JSON reports under ``--root``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs", help="directory for TensorBoard logs and the JSON reports")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("EPOCHKIT_EXAMPLE_FAST") == "1")
    args = parser.parse_args(argv)
    epochs = 2 if args.fast else 5
    buggy = run(fixed=False, epochs=epochs, root=args.root)
    assert any(f.code == "order_unchanged" for v in buggy.verdicts_ for f in v.issues), "the audit missed the bug"
    fixed = run(fixed=True, epochs=epochs, root=args.root)
    assert not any(v.issues for v in fixed.verdicts_), "the fixed run was flagged"


if __name__ == "__main__":
    main()
