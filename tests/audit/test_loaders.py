"""Every train loader is audited on its own: the loaders of a CombinedLoader (dict, list, nested; every mode) by name
in findings, metrics and the report, and a loader swapped in by ``reload_dataloaders_every_n_epochs`` from its first
epoch, with its configuration and labels read again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, RandomSampler

from epochkit import SetEpoch, ShuffleAudit
from epochkit.audit import EpochVerdict
from epochkit.audit.recording import RecordingSampler
from tests.audit import _data
from tests.helpers import quiet_trainer, read_tensorboard


class _AnyBatches(pl.LightningModule):
    """Sums a cross-entropy over every ``(x, y)`` sub-batch of a combined batch (skipping exhausted loaders)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(_data.FEATURES, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        parts: list[Any] = []

        def collect(node: Any) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    collect(value)
            elif isinstance(node, list) and node and isinstance(node[0], torch.Tensor) and len(node) == 2:
                parts.append(node)
            elif isinstance(node, list | tuple):
                for value in node:
                    collect(value)

        collect(batch)
        return sum(torch.nn.functional.cross_entropy(self.net(x), y) for x, y in parts)  # type: ignore[return-value]

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int, seed: int, **kw: Any) -> DataLoader:
    x, y = _data.make_tensors(n, 4, seed)
    return DataLoader(_data.LabelledSet(x, y), batch_size=8, **kw)


def _trainer(root: Path, callbacks: list[pl.Callback], epochs: int = 2, **kw: Any) -> pl.Trainer:
    return quiet_trainer(root, callbacks, max_epochs=epochs, **kw)


def _by_loader(verdict: EpochVerdict | None) -> dict[str | None, set[str]]:
    out: dict[str | None, set[str]] = {}
    for f in [] if verdict is None else verdict.issues:
        out.setdefault(f.loader, set()).add(f.code)
    return out


def test_an_unshuffled_loader_among_several_is_reported_by_name_with_its_own_metrics(tmp_path: Path) -> None:
    loaders = {"clean": _loader(64, 0, shuffle=True), "stale": _loader(64, 1, shuffle=False)}
    originals = {name: loader.batch_sampler for name, loader in loaders.items()}
    audit = ShuffleAudit(on_issue="log")
    logger = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, [audit], logger=logger, log_every_n_steps=1).fit(_AnyBatches(), train_dataloaders=loaders)
    assert _by_loader(audit.fit_start_) == {"stale": {"shuffle_off"}}
    assert "loader 'stale'" in audit.fit_start_.findings[0].message()
    assert {name: loader.batch_sampler for name, loader in loaders.items()} == originals  # every loader restored
    run = read_tensorboard(tmp_path / "tb")
    assert run.scalar_values("shuffle_audit/clean/coverage") == [1.0, 1.0]
    assert run.scalar_values("shuffle_audit/stale/spearman") == [pytest.approx(1.0)]
    assert abs(run.scalar_values("shuffle_audit/clean/spearman")[0]) < 0.5
    report = json.loads((Path(logger.log_dir) / "shuffle_audit.json").read_text())
    assert report["config"]["stale"][0]["sampler"] == "SequentialSampler"
    assert set(report["epochs"][1]["digests"]) == {"clean", "stale"}
    assert "shuffle_off in 'stale' (fit start)" in report["summary"]


def test_a_list_of_loaders_names_each_by_index_and_catches_the_replay_in_the_second() -> None:
    fixed = _data.FixedPermutationSampler(64)
    loaders = [_loader(64, 0, shuffle=True), _loader(64, 1, sampler=fixed)]
    audit = ShuffleAudit(on_issue="log")
    _trainer(Path.cwd(), [audit]).fit(_AnyBatches(), train_dataloaders=loaders)
    assert _by_loader(audit.verdicts_[1]) == {"1": {"order_unchanged"}}
    assert audit.verdicts_[1].metrics["0/coverage"] == 1.0 and audit.verdicts_[1].metrics["issues"] == 1.0


@pytest.mark.parametrize("mode", ["max_size_cycle", "min_size", "max_size"])
def test_nested_loaders_of_different_lengths_are_each_judged_on_one_pass_in_every_mode(mode: str) -> None:
    x, y = _data.make_tensors(32, 4, 9)
    stream = _data.EpochStream(x, y, seed=3)  # sized, read by fingerprints, cycled in max_size_cycle mode
    iterables = {
        "pair": [_loader(64, 0, shuffle=True), _loader(32, 1, shuffle=True)],
        "stream": DataLoader(stream, batch_size=8),
    }
    audit = ShuffleAudit(on_issue="raise")
    trainer = _trainer(Path.cwd(), [audit, SetEpoch()], epochs=3)
    trainer.fit(_AnyBatches(), train_dataloaders=CombinedLoader(iterables, mode))
    assert [v.epoch for v in audit.verdicts_] == [0, 1, 2]
    assert all(not v.findings for v in audit.verdicts_), [v.to_dict() for v in audit.verdicts_]
    metrics = audit.verdicts_[-1].metrics
    # A cycled loader is judged on its first pass: complete, no repeat.
    assert metrics["pair/1/coverage"] == 1.0 and metrics["stream/duplicates"] == 0.0
    assert metrics["pair/0/coverage"] == 1.0
    assert not any(isinstance(dl.batch_sampler, RecordingSampler) for dl in iterables["pair"])
    assert stream.set_calls == [0, 1, 2]  # SetEpoch reaches a loader inside a CombinedLoader


def test_sample_ids_that_fit_one_stream_of_two_fall_back_to_fingerprints_for_the_other() -> None:
    from tests.audit import _streams

    x, y = _data.make_tensors(32, 4, 2)
    iterables = {
        "hf": DataLoader(_streams.hf_stream(48, 2, 16), batch_size=8),  # dict batches with an "idx" column
        "plain": DataLoader(_data.StreamSet(x, y, shard=True), batch_size=8),  # (x, y) tuples: no "idx"
    }

    class Both(_AnyBatches):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            hf, (x, y) = batch["hf"], batch["plain"]
            return super().training_step([[hf["x"], hf["y"]], [x, y]], batch_idx)

    audit = ShuffleAudit(on_issue="log", sample_ids="idx")
    combined = CombinedLoader(iterables, "min_size")
    _trainer(Path.cwd(), [audit, SetEpoch()], epochs=2).fit(Both(), train_dataloaders=combined)
    notes = audit.verdicts_[0].notes
    assert any(n.startswith("plain: sample_ids='idx' does not apply to its batches") for n in notes), notes
    assert audit.verdicts_[0].metrics["plain/duplicates"] == 0.0  # audited by content fingerprints instead
    assert audit.verdicts_[0].metrics["hf/duplicates"] == 0.0


def test_a_loader_rebuilt_every_epoch_with_a_fixed_seed_is_reported_at_the_first_reload() -> None:
    class Rebuilt(pl.LightningDataModule):
        def __init__(self, num_workers: int) -> None:
            super().__init__()
            self.num_workers = num_workers
            self.data = _data.LabelledSet(*_data.make_tensors(96, 4, 0))

        def train_dataloader(self) -> DataLoader:
            sampler = RandomSampler(self.data, generator=torch.Generator().manual_seed(0))
            return DataLoader(self.data, batch_size=16, sampler=sampler, num_workers=self.num_workers)

    for workers in (0, 2):
        audit = ShuffleAudit(on_issue="log")
        trainer = _trainer(Path.cwd(), [audit], epochs=3, reload_dataloaders_every_n_epochs=1, limit_val_batches=0)
        trainer.fit(_data.model(), datamodule=Rebuilt(workers))
        codes = [sorted(f.code for f in v.issues) for v in audit.verdicts_]
        # With workers Lightning draws one discarded pass of each reloaded loader, so epoch 1 differs from epoch 0
        # and the repeat only shows from epoch 2: the cause is reported at epoch 1 all the same, once.
        assert codes == [[], ["same_seed_reload"], []], (workers, codes)
        finding = audit.verdicts_[1].issues[0]
        assert "generator seeded 0, like the loader it replaced" in finding.evidence
        assert "seed the generator from the epoch" in finding.fix


def test_a_reloaded_loader_is_described_again_with_its_labels() -> None:
    class Curriculum(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            sort = self.trainer.current_epoch >= 1  # from epoch 1 on: another data set, sorted, unshuffled
            x, y = _data.make_tensors(96, 4, 5, sort_by_label=sort)
            return DataLoader(_data.LabelledSet(x, y), batch_size=16, shuffle=not sort)

    audit = ShuffleAudit(on_issue="log")
    trainer = _trainer(Path.cwd(), [audit], epochs=2, reload_dataloaders_every_n_epochs=1, limit_val_batches=0)
    trainer.fit(_data.model(), datamodule=Curriculum())
    assert not audit.fit_start_.findings and not audit.verdicts_[0].findings
    assert {f.code for f in audit.verdicts_[1].issues} == {"shuffle_off", "sorted_labels", "class_blocked_batches"}
    assert audit.configs_["train_dataloader"][0]["sampler"] == "SequentialSampler"
