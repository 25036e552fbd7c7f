"""ShuffleAudit on real data pipelines built in the test (no download): Hugging Face ``datasets`` (a map-style
``Dataset`` in torch format; a streaming ``IterableDataset`` from ``to_iterable_dataset(num_shards=...)``, shuffled
and not, with and without ``set_epoch``, with 0 and 2 workers) and litdata (``optimize`` into ``tmp_path``, then
``StreamingDataset`` through ``StreamingDataLoader`` or a plain ``DataLoader``, shuffled and not, 1 and 2 ranks).

The 20-seed false-positive suites iterate the real pipelines for 2 epochs each and judge the recorded orders with the
audit's pure functions (with the configuration ``describe_loader`` reads from the real loader); real Trainer fits are
kept to a few per pipeline kind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from litdata.utilities.env import _DistributedEnv
from torch.utils.data import DataLoader

from epochkit import SetEpoch, ShuffleAudit
from epochkit.audit import EpochVerdict
from epochkit.audit.recording import describe_loader
from epochkit.audit.set_epoch import epoch_targets
from epochkit.audit.verdicts import epoch_payload, judge_epoch, judge_fit_start
from tests.audit import _streams as T
from tests.helpers import fit_ddp, quiet_trainer

NOTICES = {"weak_mixing", "correlated_batches"}


def _fit(dm: pl.LightningDataModule, callbacks: list[pl.Callback], root: Path, epochs: int = 3, **kw: Any) -> None:
    trainer = quiet_trainer(root, callbacks, **{"max_epochs": epochs, "limit_val_batches": 0, **kw})
    trainer.fit(T.model(), datamodule=dm)


def _codes(verdict: EpochVerdict | None, severity: str = "issue") -> set[str]:
    return set() if verdict is None else {f.code for f in verdict.findings if f.severity == severity}


def _judge(config: Any, epochs: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[EpochVerdict]:
    """The pure verdicts of recorded epochs (``epochs[e][rank] = (ids, batch sizes)``)."""
    verdicts, previous = [], None
    world = len(epochs[0])
    for epoch, per_rank in enumerate(epochs):
        payloads = [
            epoch_payload(ids, sizes, source="sample_ids", dataset_size=None, world_size=world)
            for ids, sizes in per_rank
        ]
        verdict, previous = judge_epoch(epoch, payloads, [config] * world, previous, epoch - 1 if epoch else None)
        verdicts.append(verdict)
    return verdicts


# --------------------------------------------------------------------------------------- Hugging Face datasets


@pytest.mark.parametrize("num_workers", [0, 2])
def test_hf_stream_with_set_epoch_is_quiet_and_without_it_replays_epoch_0(num_workers: int, tmp_path: Path) -> None:
    healthy = ShuffleAudit(on_issue="raise", sample_ids="idx", labels="y")
    _fit(T.HFStream(n=256, num_workers=num_workers), [healthy, SetEpoch()], tmp_path)
    assert not healthy.fit_start_.findings  # workers get disjoint shards: no iterable_workers notice
    assert all(not v.issues for v in healthy.verdicts_)
    if num_workers == 0:  # correlated by design (4 shards read together, a buffer of 64): the README's example
        assert 0.6 < healthy.verdicts_[1].metrics["spearman"] < 0.8
    assert all(_codes(v, "notice") <= NOTICES for v in healthy.verdicts_)
    assert healthy.configs_["train_dataloader"][0]["stream"] == "hf_datasets"
    assert healthy.configs_["train_dataloader"][0]["buffer_size"] == 64

    # What HF's docs ask, minus the call Lightning never makes: every epoch replays epoch 0.
    replay = ShuffleAudit(on_issue="log", sample_ids="idx")
    _fit(T.HFStream(n=256, num_workers=num_workers), [replay], tmp_path, epochs=2)
    finding = replay.verdicts_[1].findings[0]
    assert (finding.code, finding.severity) == ("order_unchanged", "issue")
    assert "order identical to epoch 0" in finding.evidence
    assert finding.fix.startswith("Lightning never calls set_epoch on an IterableDataset: add epochkit.SetEpoch()")


def test_an_unshuffled_hf_stream_is_shuffle_off_at_fit_start(tmp_path: Path) -> None:
    audit = ShuffleAudit(on_issue="log")  # content fingerprints: no sample_ids needed
    _fit(T.HFStream(n=128, buffer=None), [audit], tmp_path, epochs=2)
    assert _codes(audit.fit_start_) == {"shuffle_off"}
    finding = audit.fit_start_.findings[0]
    assert "never shuffled" in finding.evidence and ".shuffle(seed=..., buffer_size=...)" in finding.fix
    assert not audit.verdicts_[1].findings and "explained by shuffle_off" in audit.verdicts_[1].notes[0]


def test_a_map_style_hf_dataset_in_a_dataloader_is_audited_by_sampler_indices(tmp_path: Path) -> None:
    class HFTable(pl.LightningDataModule):
        def __init__(self, shuffle: bool) -> None:
            super().__init__()
            self.shuffle = shuffle

        def train_dataloader(self) -> DataLoader:
            return DataLoader(T.hf_table(200, 0), batch_size=16, shuffle=self.shuffle)

    audit = ShuffleAudit(on_issue="raise", labels="y")
    _fit(HFTable(shuffle=True), [audit], tmp_path)
    assert all(not v.findings for v in audit.verdicts_)
    assert audit.configs_["train_dataloader"][0]["design"] == "sample"
    assert audit.verdicts_[-1].metrics["coverage"] == 1.0 and "batch_entropy_ratio" in audit.verdicts_[-1].metrics
    unshuffled = ShuffleAudit(on_issue="log", labels="y")
    _fit(HFTable(shuffle=False), [unshuffled], tmp_path, epochs=1)
    assert _codes(unshuffled.fit_start_) == {"shuffle_off"}


def _hf_seed(seed: int) -> tuple[int, int, int, int]:
    rng = np.random.default_rng(seed)
    batch = int(rng.choice([4, 8, 16, 32]))
    n = int(rng.integers(8 * batch, 320))
    shards = int(rng.choice([1, 2, 4, 8, 16]))
    buffer = int(rng.choice([b for b in (16, 32, 64, 256, 1000) if b >= 2 * batch]))
    return n, shards, buffer, batch


@pytest.mark.parametrize("seed", range(20))
def test_healthy_hf_streams_flag_nothing_over_20_seeds(seed: int) -> None:
    n, shards, buffer, batch = _hf_seed(seed)
    loader = DataLoader(T.hf_stream(n, shards, buffer, seed=seed, shuffle_seed=seed), batch_size=batch)
    verdicts = _judge(describe_loader(loader), [[epoch] for epoch in T.orders(loader, 2)])
    assert all(not v.issues for v in verdicts), (n, shards, buffer, batch, [v.to_dict() for v in verdicts])
    assert all(_codes(v, "notice") <= NOTICES for v in verdicts)


@pytest.mark.parametrize("seed", range(20))
def test_healthy_hf_streams_with_2_workers_flag_nothing_over_20_seeds(seed: int) -> None:
    n, shards, buffer, batch = _hf_seed(100 + seed)
    shards = max(shards, 2)
    stream = T.hf_stream(n, shards, buffer, seed=seed, shuffle_seed=seed)
    # Persistent workers: a Hugging Face stream shares its epoch with them, so set_epoch still reaches them.
    loader = DataLoader(stream, batch_size=batch, num_workers=2, persistent_workers=True)
    config = describe_loader(loader)
    assert not judge_fit_start([config], world_size=1).findings  # the workers see the epoch: nothing to say
    verdicts = _judge(config, [[epoch] for epoch in T.orders(loader, 2)])
    assert all(not v.issues for v in verdicts), (n, shards, buffer, batch, [v.to_dict() for v in verdicts])


def test_hf_streams_without_set_epoch_replay_and_are_issues() -> None:
    for seed in range(3):
        n, shards, buffer, batch = _hf_seed(seed)
        loader = DataLoader(T.hf_stream(n, shards, buffer, seed=seed), batch_size=batch)
        verdicts = _judge(describe_loader(loader), [[epoch] for epoch in T.orders(loader, 2, set_epoch=False)])
        assert [f.code for f in verdicts[1].issues] == ["order_unchanged"]


# ------------------------------------------------------------------------------------------------------ litdata


@pytest.fixture
def litdata_dir(tmp_path: Path) -> str:
    return T.optimize_litdata(tmp_path, 256, chunk_size=32)


def test_litdata_streaming_loader_is_quiet_and_unshuffled_is_shuffle_off(litdata_dir: str, tmp_path: Path) -> None:
    healthy = ShuffleAudit(on_issue="raise", sample_ids="idx", labels="y")
    dm = T.LitStream(litdata_dir, str(tmp_path / "cache_a"))
    _fit(dm, [healthy, SetEpoch()], tmp_path)  # SetEpoch leaves a StreamingDataLoader's data set alone
    assert epoch_targets(dm.trainer.train_dataloader) == []
    config = healthy.configs_["train_dataloader"][0]
    assert (config["stream"], config["chunks"], config["chunk_size"], config["loader_sets_epoch"]) == (
        "litdata",
        8,
        32,
        True,
    )
    assert all(not v.issues for v in healthy.verdicts_)
    # Batches of 16 filled from chunks of 32: half the pairs meet again, measured and named, not an issue.
    notice = healthy.verdicts_[1].findings[0]
    assert (notice.code, notice.severity) == ("correlated_batches", "notice")
    assert "litdata fills each batch from one chunk window" in notice.fix

    unshuffled = ShuffleAudit(on_issue="log", sample_ids="idx")
    _fit(T.LitStream(litdata_dir, str(tmp_path / "cache_b"), shuffle=False), [unshuffled], tmp_path, epochs=2)
    assert _codes(unshuffled.fit_start_) == {"shuffle_off"}
    assert "StreamingDataset(shuffle=False)" in unshuffled.fit_start_.findings[0].evidence


def test_litdata_in_a_plain_dataloader_with_workers_needs_set_epoch(litdata_dir: str, tmp_path: Path) -> None:
    # A plain DataLoader's workers count epochs on their own copies; the main copy stays at epoch 1 forever.
    replay = ShuffleAudit(on_issue="log", sample_ids="idx")
    dm = T.LitStream(litdata_dir, str(tmp_path / "cache_a"), plain=True, num_workers=2)
    _fit(dm, [replay], tmp_path, epochs=2)
    assert [f.code for f in replay.verdicts_[1].issues] == ["order_unchanged"]
    assert "add epochkit.SetEpoch()" in replay.verdicts_[1].issues[0].fix
    fixed = ShuffleAudit(on_issue="raise", sample_ids="idx")
    dm = T.LitStream(litdata_dir, str(tmp_path / "cache_b"), plain=True, num_workers=2)
    _fit(dm, [fixed, SetEpoch()], tmp_path, epochs=2)
    assert all(not v.issues for v in fixed.verdicts_)


@pytest.mark.ddp
def test_litdata_on_2_ranks_is_quiet_and_disjoint(litdata_dir: str, tmp_path: Path) -> None:
    audit = ShuffleAudit(on_issue="raise", sample_ids="idx")
    dm = T.LitStream(litdata_dir, str(tmp_path / "cache"))
    reports = fit_ddp(T.model(), dm, tmp_path, [audit], max_epochs=2, limit_val_batches=0)
    assert all(r.error is None for r in reports), [r.error for r in reports]
    states = [r.callback_states[audit.state_key] for r in reports]
    assert states[0]["verdicts"] == states[1]["verdicts"]
    assert states[0]["fit_start"]["findings"] == []  # litdata splits ranks itself: no iterable_workers notice
    for verdict in states[0]["verdicts"]:
        assert not [f for f in verdict["findings"] if f["severity"] == "issue"], verdict
        assert verdict["metrics"]["rank_overlap"] == 0.0
        assert len(verdict["digests"]["train_dataloader"]["ranks"]) == 2


def _lit_seed(seed: int, root: Path) -> tuple[str, int, int | str | None]:
    rng = np.random.default_rng(seed)
    batch = int(rng.choice([4, 8, 16]))
    chunk = int(rng.choice([c for c in (16, 32, 64, 100) if c >= 2 * batch]))
    window = rng.choice([None, 0, 2 * batch])
    path = T.optimize_litdata(root, int(rng.integers(6 * chunk, 640)), chunk_size=chunk, seed=seed)
    return path, batch, None if window is None else int(window)


@pytest.mark.parametrize("seed", range(20))
def test_healthy_litdata_streams_flag_nothing_over_20_seeds(seed: int, tmp_path: Path) -> None:
    path, batch, window = _lit_seed(seed, tmp_path)
    stream = T.litdata_stream(path, str(tmp_path / "cache"), shuffle=True, seed=seed, window=window)
    import litdata

    loader = litdata.StreamingDataLoader(stream, batch_size=batch)
    verdicts = _judge(describe_loader(loader), [[epoch] for epoch in T.orders(loader, 2)])
    assert all(not v.issues for v in verdicts), (path, batch, window, [v.to_dict() for v in verdicts])


@pytest.mark.parametrize("seed", range(20))
def test_healthy_litdata_streams_on_2_ranks_flag_nothing_over_20_seeds(seed: int, tmp_path: Path) -> None:
    """Both ranks' streams, each computed by litdata's own chunk assignment for rank r of 2 (its distributed
    environment set as a DDP process would detect it), merged by global position as the audit merges ranks."""
    import litdata

    path, batch, window = _lit_seed(200 + seed, tmp_path)
    per_rank = []
    for rank in range(2):
        stream = T.litdata_stream(path, str(tmp_path / f"cache{rank}"), shuffle=True, seed=seed, window=window)
        stream.distributed_env = _DistributedEnv(world_size=2, global_rank=rank, num_nodes=1)
        per_rank.append(list(T.orders(litdata.StreamingDataLoader(stream, batch_size=batch), 2)))
    config = describe_loader(litdata.StreamingDataLoader(stream, batch_size=batch))
    verdicts = _judge(config, [[per_rank[0][e], per_rank[1][e]] for e in range(2)])
    for verdict in verdicts:
        assert not verdict.issues, (path, batch, window, verdict.to_dict())
        assert verdict.metrics["rank_overlap"] == 0.0


def test_litdata_with_batches_as_large_as_the_shuffle_window_is_an_issue(tmp_path: Path) -> None:
    # item_shuffle_window=16 with batches of 16: every batch is one window, the same 16 samples every epoch.
    import litdata

    path = T.optimize_litdata(tmp_path, 512, chunk_size=64)
    loader = litdata.StreamingDataLoader(T.litdata_stream(path, str(tmp_path / "c"), True, window=16), batch_size=16)
    verdicts = _judge(describe_loader(loader), [[epoch] for epoch in T.orders(loader, 2)])
    assert [f.code for f in verdicts[1].issues] == ["batches_unchanged"]
    assert "32 of 32 batches identical as sets" in verdicts[1].issues[0].evidence


def test_a_litdata_order_matches_the_simulation_model(tmp_path: Path) -> None:
    """The Monte Carlo model of ``test_block_null`` describes litdata: the real stream fills each batch of 8 from one
    chunk of 32 as the model does, so both re-meet about 7/31 of their same-batch pairs."""
    import litdata

    from epochkit.audit import functional as F

    path = T.optimize_litdata(tmp_path, 640, chunk_size=32)
    loader = litdata.StreamingDataLoader(T.litdata_stream(path, str(tmp_path / "c"), True), batch_size=8)
    (o0, _), (o1, _) = T.orders(loader, 2)
    batches = np.arange(o0.size) // 8
    share = F.order_stats(o0, batches, o1, batches).cobatch_share
    assert 0.15 < share < 0.3, share  # (8 - 1) / (32 - 1) = 0.226
    assert os.path.isdir(path)
