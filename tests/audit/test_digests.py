"""Order digests: a resumed run's equal the uninterrupted run's (a map-style loader and a Hugging Face stream with
SetEpoch), two runs differing from some epoch on are told apart at that epoch, and ``python -m epochkit.audit
compare`` finds a planted difference at the right epoch and rank."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

from epochkit import SetEpoch, ShuffleAudit
from epochkit.audit import compare
from epochkit.audit.__main__ import main
from epochkit.audit.callback import DIGEST_FILE, REPORT_FILE
from tests.audit import _data, _streams
from tests.helpers import quiet_trainer


class EpochSeeded(Sampler[int]):
    """A fresh permutation from ``(seed, epoch)``; from epoch ``switch`` on, from another seed (a planted change)."""

    def __init__(self, n: int, seed: int = 0, switch: int | None = None) -> None:
        self.n, self.seed, self.switch, self.epoch = n, seed, switch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = self.seed + (1000 if self.switch is not None and self.epoch >= self.switch else 0)
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 100 + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class Seeded(pl.LightningDataModule):
    def __init__(self, switch: int | None = None, stream: bool = False) -> None:
        super().__init__()
        self.switch, self.stream = switch, stream

    def train_dataloader(self) -> DataLoader:
        if self.stream:
            return DataLoader(_streams.hf_stream(160, 4, 32, seed=1), batch_size=16)
        data = _data.LabelledSet(*_data.make_tensors(96, 4, 0))
        return DataLoader(data, batch_size=16, sampler=EpochSeeded(96, switch=self.switch))


def _run(root: Path, epochs: int, dm: Seeded, ckpt: Path | None = None) -> Path:
    callbacks: list[pl.Callback] = [ShuffleAudit(on_issue="raise", sample_ids="idx" if dm.stream else None)]
    callbacks += [SetEpoch(), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)]
    trainer = quiet_trainer(root, callbacks, max_epochs=epochs, limit_val_batches=0, enable_checkpointing=True)
    model = _streams.model() if dm.stream else _data.model()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    reports = sorted((root / "shuffle_audit").glob("version_*"))
    return reports[-1] / REPORT_FILE


@pytest.mark.parametrize("stream", [False, True], ids=["sampler", "hf_stream_with_set_epoch"])
def test_a_resumed_run_has_the_digests_of_an_uninterrupted_one(stream: bool, tmp_path: Path) -> None:
    full = _run(tmp_path / "full", 4, Seeded(stream=stream))
    _run(tmp_path / "part", 2, Seeded(stream=stream))
    resumed = _run(tmp_path / "part", 4, Seeded(stream=stream), ckpt=tmp_path / "part" / "ckpt" / "last.ckpt")
    assert resumed.parent.name == "version_1"  # a second fit without a logger never overwrites the first report
    result = compare(full, resumed)
    assert result.identical and result.epochs == (0, 1, 2, 3), result
    assert (full.parent / DIGEST_FILE).read_text() == (resumed.parent / DIGEST_FILE).read_text()
    assert (full.parent / DIGEST_FILE).read_text().count("\n") == 4


def test_runs_that_differ_from_an_epoch_on_are_told_apart_there(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", 4, Seeded())
    b = _run(tmp_path / "b", 4, Seeded(switch=2))
    result = compare(a, b)
    assert (result.identical, result.epoch, result.rank, result.loader) == (False, 2, 0, "train_dataloader")


def test_epochs_are_matched_by_their_number_when_one_report_starts_later(tmp_path: Path) -> None:
    # The audit added on a resume at epoch 2: its report holds epochs 2 and 3 only, the full run's 0 to 3.
    full = _run(tmp_path / "full", 4, Seeded())
    first = quiet_trainer(
        tmp_path / "late",
        [ModelCheckpoint(dirpath=tmp_path / "late" / "ckpt", save_last=True)],
        max_epochs=2,
        limit_val_batches=0,
        enable_checkpointing=True,
    )
    first.fit(_data.model(), datamodule=Seeded())
    late = _run(tmp_path / "late", 4, Seeded(), ckpt=tmp_path / "late" / "ckpt" / "last.ckpt")
    assert [e["epoch"] for e in json.loads(late.read_text())["epochs"]] == [2, 3]
    result = compare(full, late)
    assert result.message == "identical orders in epochs 2-3 (1 loader, 1 rank); only one run recorded epochs 0-1"
    assert result.identical and result.epochs == (2, 3)


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run ``python -m epochkit.audit compare ...`` as the interpreter does (``runpy``, the module as ``__main__``),
    in this process: a fresh interpreter would spend most of the test importing torch and Lightning."""
    monkeypatch.setattr(sys, "argv", ["python -m epochkit.audit", "compare", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("epochkit.audit", run_name="__main__", alter_sys=True)
    return int(exit_.value.code or 0)


def test_the_compare_entry_point_finds_a_planted_difference_at_its_epoch_and_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _run(tmp_path / "a", 3, Seeded())
    assert main(["compare", str(a), str(a)]) == 0
    assert capsys.readouterr().out.strip() == "identical orders in epochs 0-2 (1 loader, 1 rank)"
    # Plant a rank-1 difference at epoch 1 in a two-rank report (each rank's digest, then the merged one).
    report = json.loads(a.read_text())
    for entry in report["epochs"]:
        digest = entry["digests"]["train_dataloader"]
        digest["ranks"] = digest["ranks"] * 2
    planted = json.loads(json.dumps(report))
    planted["epochs"][1]["digests"]["train_dataloader"]["ranks"][1] = "0123456789abcdef"
    planted["epochs"][1]["digests"]["train_dataloader"]["merged"] = "fedcba9876543210"
    (tmp_path / "two.json").write_text(json.dumps(report))
    (tmp_path / "planted.json").write_text(json.dumps(planted))
    assert _cli(monkeypatch, str(tmp_path / "two.json"), str(tmp_path / "planted.json")) == 1  # as a user runs it
    expected_rank = report["epochs"][1]["digests"]["train_dataloader"]["ranks"][1]
    assert capsys.readouterr().out.strip() == (
        f"first difference in epoch 1, loader 'train_dataloader', rank 1: {expected_rank} != 0123456789abcdef"
    )
    assert main(["compare", str(a), str(tmp_path / "nope.json")]) == 2
    assert "cannot read a shuffle audit report from" in capsys.readouterr().err
