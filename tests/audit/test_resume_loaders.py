"""The audit leaves a stateful loader's own state alone: torchdata's ``StatefulDataLoader.state_dict()`` is the same
with the audit's recorder attached as without it, at every batch, and a loader restored from it continues the same
way (issue 21, item 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler

from epochkit.audit.recording import attach, describe_loader, detach

N, BATCH, CUT = 48, 4, 5

Make = Callable[[TensorDataset, int], StatefulDataLoader]


def _torchdata_random(data: TensorDataset, workers: int) -> StatefulDataLoader:
    sampler = StatefulRandomSampler(data, generator=torch.Generator().manual_seed(3))
    return StatefulDataLoader(data, batch_size=BATCH, sampler=sampler, num_workers=workers)


def _torch_random(data: TensorDataset, workers: int) -> StatefulDataLoader:
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(3))
    return StatefulDataLoader(data, batch_size=BATCH, sampler=sampler, num_workers=workers)


def _distributed(data: TensorDataset, workers: int) -> StatefulDataLoader:
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=1)
    sampler.set_epoch(1)
    return StatefulDataLoader(data, batch_size=BATCH, sampler=sampler, num_workers=workers)


def _batch_sampler(data: TensorDataset, workers: int) -> StatefulDataLoader:
    inner = StatefulRandomSampler(data, generator=torch.Generator().manual_seed(5))
    return StatefulDataLoader(data, batch_sampler=BatchSampler(inner, BATCH, drop_last=False), num_workers=workers)


def _shuffle_true(data: TensorDataset, workers: int) -> StatefulDataLoader:
    torch.manual_seed(11)  # StatefulDataLoader(shuffle=True) makes torchdata's RandomSampler from the global seed
    return StatefulDataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers)


LOADERS = {
    "torchdata_random": _torchdata_random,
    "torch_random_generator": _torch_random,
    "distributed": _distributed,
    "batch_sampler": _batch_sampler,
    "shuffle_true": _shuffle_true,
}


def _plain(state: Any) -> Any:
    """A state with its tensors (generator states) as lists, so that two states compare with ``==``."""
    if isinstance(state, dict):
        return {k: _plain(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_plain(v) for v in state]
    return state.tolist() if isinstance(state, torch.Tensor) else state


def _run(make: Make, workers: int, audited: bool) -> tuple[list[Any], list[int], list[int]]:
    """States at every batch up to the cut, and the ids consumed after a restore from the cut's state (through the
    end of the epoch and one more epoch)."""
    torch.manual_seed(0)  # workers' base seed is drawn from the global generator when an iterator starts
    data = TensorDataset(torch.arange(N))
    loader = make(data, workers)
    recorder = attach(loader) if audited else None
    states, before = [], []
    it = iter(loader)
    for _ in range(CUT):
        before.extend(next(it)[0].tolist())
        states.append(_plain(loader.state_dict()))
    del it
    restored = make(data, workers)
    if audited:
        attach(restored)
    restored.load_state_dict(loader.state_dict())
    after = [i for batch in restored for i in batch[0].tolist()]
    after += [i for batch in restored for i in batch[0].tolist()]
    if recorder is not None:
        detach(loader)
    return states, before, after


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_state_and_restore_unchanged_by_the_recorder(kind: str, workers: int) -> None:
    plain = _run(LOADERS[kind], workers, audited=False)
    audited = _run(LOADERS[kind], workers, audited=True)
    assert audited[0] == plain[0]  # the loader's own state, batch by batch
    assert audited[1] == plain[1]
    assert audited[2] == plain[2]  # what it continues with after the restore
    assert len(plain[1]) + len(plain[2]) == 2 * N


def test_a_stateful_loader_lightning_rebuilds_for_ddp_is_described_by_the_sampler_that_orders_it() -> None:
    # Under DDP (use_distributed_sampler=True) Lightning rebuilds a StatefulDataLoader(shuffle=True) with its
    # DistributedSamplerWrapper around torchdata's RandomSampler inside the loader's torchdata BatchSampler; the
    # loader's `sampler` is a SequentialSampler it never draws from. The audit reads the sampler that orders the
    # batches (it read the SequentialSampler: a false shuffle_off at fit start).
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader

    data = TensorDataset(torch.arange(N))
    with _replace_dunder_methods(DataLoader, "dataset"):  # what Lightning does around train_dataloader()
        loader = StatefulDataLoader(data, batch_size=BATCH, shuffle=True)
    sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=0)
    rebuilt = _update_dataloader(loader, sampler)  # as Lightning's data connector does on every DDP rank
    assert type(rebuilt.sampler).__name__ == "SequentialSampler" and rebuilt.batch_sampler.sampler is sampler
    config = describe_loader(rebuilt)
    assert config["sampler"] == "DistributedSamplerWrapper(RandomSampler)"
    assert config["shuffle"] is not False and config["sampler_set_epoch"]
