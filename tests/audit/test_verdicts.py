"""The pure verdict functions on multi-rank, subsampled epochs built from real DistributedSampler orders: the cases a
2-process fit is too slow to cover at scale (max_samples across ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from epochkit.audit.payload import EpochPayload
from epochkit.audit.verdicts import epoch_payload, judge_epoch, judge_fit_start

N, BATCH, WORLD = 20_000, 32, 2


def _rank_orders(epoch: int, seeds: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """What each rank's DistributedSampler yields for ``epoch`` (as Lightning sets it), per-rank seeds."""
    orders = []
    for rank, seed in enumerate(seeds):
        sampler = DistributedSampler(range(N), num_replicas=WORLD, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        sampler.set_epoch(epoch)
        orders.append(np.fromiter(iter(sampler), np.int64))
    return orders


def _payloads(orders: list[np.ndarray], max_samples: int | None) -> list[EpochPayload]:
    labels = np.asarray(torch.randint(0, 7, (N,), generator=torch.Generator().manual_seed(0)))
    return [
        epoch_payload(
            ids,
            np.diff(np.append(np.arange(0, ids.size, BATCH), ids.size)),  # batch sizes, the last one smaller
            source="sampler indices",
            dataset_size=N,
            world_size=WORLD,
            max_samples=max_samples,
            labels_by_id=labels,
        )
        for ids in orders
    ]


CONFIG = [{"dataset_size": N, "padding": 0}] * WORLD


@pytest.mark.parametrize("max_samples", [None, 2_000])
def test_healthy_distributed_epochs_flag_nothing_with_or_without_subsampling(max_samples: int | None) -> None:
    previous, previous_epoch = None, None
    for epoch in range(3):
        payloads = _payloads(_rank_orders(epoch), max_samples)
        verdict, previous = judge_epoch(epoch, payloads, CONFIG, previous, previous_epoch)
        previous_epoch = epoch
        assert not verdict.findings, verdict.to_dict()
    assert verdict.metrics["coverage"] == pytest.approx(1.0, abs=0.1)
    assert abs(verdict.metrics["spearman"]) < 0.2
    if max_samples:
        assert previous is not None
        assert 1_500 < previous.ids.size < 2_500  # the kept record is bounded across both ranks


@pytest.mark.parametrize("max_samples", [None, 2_000])
def test_rank_seeded_samplers_overlap_and_miss_samples_even_when_subsampled(max_samples: int | None) -> None:
    payloads = _payloads(_rank_orders(0, seeds=(0, 1)), max_samples)
    verdict, _ = judge_epoch(0, payloads, CONFIG)
    assert {f.code for f in verdict.findings} == {"rank_overlap", "incomplete_coverage"}
    assert 0.25 < verdict.metrics["rank_overlap"] < 0.42  # two independent halves share about a third of the union


@pytest.mark.parametrize("max_samples", [None, 2_000])
def test_a_distributed_sampler_that_is_never_set_epoch_is_caught_when_subsampled(max_samples: int | None) -> None:
    first, record = judge_epoch(0, _payloads(_rank_orders(0), max_samples), CONFIG)
    again, _ = judge_epoch(1, _payloads(_rank_orders(0), max_samples), CONFIG, record, 0)
    assert not first.findings
    assert [f.code for f in again.findings] == ["order_unchanged"]
    assert "order identical to epoch 0: Spearman 1.000" in again.findings[0].evidence


def test_fit_start_names_every_setting_the_ranks_disagree_on() -> None:
    base = {"sampler": "DistributedSampler", "seed": 0, "length": 100, "shuffle": True, "drop_last": False}
    verdict = judge_fit_start([base, {**base, "seed": 1, "drop_last": True}], world_size=2)
    assert [f.code for f in verdict.findings] == ["rank_sampler_mismatch"]
    assert verdict.findings[0].evidence == "seed rank 0=0, rank 1=1; drop_last rank 0=False, rank 1=True"


def test_an_order_anti_correlated_with_the_previous_epoch_is_flagged() -> None:
    # Epoch 1 walks epoch 0 backwards with every sample's position jittered (not a plain reversal): Spearman -0.75 on
    # 400 samples, far outside the ±0.30 a fresh shuffle stays within.
    n, batch = 400, 16
    gen = torch.Generator().manual_seed(0)
    first = np.asarray(torch.randperm(n, generator=gen))
    second = first[np.argsort(-np.arange(n) + 100 * np.asarray(torch.randn(n, generator=gen)))]
    config = [{"dataset_size": n, "padding": 0}]

    def payload(ids: np.ndarray) -> list[EpochPayload]:
        sizes = np.full(n // batch, batch)
        return [epoch_payload(ids, sizes, source="sampler indices", dataset_size=n, world_size=1)]

    verdict, record = judge_epoch(0, payload(first), config)
    assert not verdict.findings
    verdict, _ = judge_epoch(1, payload(second), config, record, 0)
    assert verdict.metrics["spearman"] < -0.7
    assert [f.code for f in verdict.findings] == ["order_unchanged"], verdict.to_dict()
    assert "positions correlate with epoch 0: Spearman -0." in verdict.findings[0].evidence
