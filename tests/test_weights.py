"""The one weight-copy engine (``epochkit._weights``) that ``HostWeights`` and ``WeightReset`` share: one tie rule,
one copy path."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from epochkit import _weights
from epochkit._weights import copy_tensors, distinct, named_tensors, ties
from epochkit.cv import WeightReset
from epochkit.stopping import HostWeights


class _SharedStorage(nn.Module):
    """Two Parameter objects over the same bytes (not one object under two names), plus an ordinary tie."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # a tie: one object, two names
        self.view = nn.Parameter(self.a.bias.data)  # another object over a.bias's storage
        self.register_buffer("empty1", torch.empty(0))
        self.register_buffer("empty2", torch.empty(0))


def test_one_tie_rule_for_both_users() -> None:
    module = _SharedStorage()
    named = named_tensors(module)
    slots, tensors = distinct(named)
    assert slots["b.weight"] == slots["a.weight"] and slots["view"] == slots["a.bias"]
    assert slots["empty1"] != slots["empty2"]  # empty tensors are never tied
    assert ties(named) == [["a.bias", "view"], ["a.weight", "b.weight"]]
    host = HostWeights()
    host.capture(module)
    reset = WeightReset()
    reset.snapshot(module)
    assert host.nbytes == reset.nbytes == sum(t.numel() * t.element_size() for t in tensors)


def test_restore_keeps_distinct_objects_over_one_storage_distinct() -> None:
    module = _SharedStorage()
    view = module.view
    reset, host = WeightReset(), HostWeights()
    reset.snapshot(module)
    host.capture(module)
    expected = {k: v.detach().clone() for k, v in named_tensors(module).items()}
    with torch.no_grad():
        module.a.bias.fill_(5.0)
        module.a.weight.fill_(5.0)
    reset.restore(module)
    assert module.view is view and module.b.weight is module.a.weight  # nothing re-tied that was not broken
    assert all(torch.equal(named_tensors(module)[k], v) for k, v in expected.items())
    with torch.no_grad():
        module.a.bias.fill_(7.0)
    host.load_into(module)
    assert torch.equal(module.view, expected["view"])


class _Halves(nn.Module):
    """Two parameters over the two halves of one flat storage (as a fused or flat-parameter layout has them): the
    same device, storage, shape, strides and dtype; only the offset tells them apart."""

    def __init__(self) -> None:
        super().__init__()
        flat = torch.arange(1.0, 9.0)
        self.lo = nn.Parameter(flat[:4])
        self.hi = nn.Parameter(flat[4:])


def test_parameters_over_two_halves_of_one_storage_are_two_tensors_and_both_restored() -> None:
    module = _Halves()
    assert module.lo.untyped_storage().data_ptr() == module.hi.untyped_storage().data_ptr()
    named = named_tensors(module)
    slots, tensors = distinct(named)
    assert slots == {"lo": 0, "hi": 1} and len(tensors) == 2 and ties(named) == []
    expected = {"lo": torch.arange(1.0, 5.0), "hi": torch.arange(5.0, 9.0)}
    host, reset = HostWeights(), WeightReset()
    host.capture(module)
    reset.snapshot(module)
    for put_back in (host.load_into, reset.restore):
        with torch.no_grad():
            module.lo.zero_()
            module.hi.zero_()
        put_back(module)
        restored = {name: tensor.detach().clone() for name, tensor in named_tensors(module).items()}
        assert restored.keys() == expected.keys(), put_back
        assert all(torch.equal(restored[k], v) for k, v in expected.items()), (put_back, restored)


def test_copy_tensors_copies_every_pair_across_dtypes_of_the_same_device() -> None:
    targets = [torch.zeros(2), torch.zeros(3, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)]
    sources = [torch.ones(2), torch.full((3,), 2.0, dtype=torch.float64), torch.tensor([7])]
    copy_tensors(targets, sources)
    assert all(torch.equal(t, s) for t, s in zip(targets, sources, strict=True))


def test_a_host_copy_runs_on_one_torch_thread_and_gives_the_count_back() -> None:
    """Host-to-host copies run with one intra-op thread (a parallel region per tensor waits for a descheduled
    thread on a busy machine) and leave the process's thread count as it was, after an error too."""
    before = torch.get_num_threads()
    seen: list[int] = []

    class Probe(torch.Tensor):
        """A source whose copy reports the thread count it ran under."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if getattr(func, "__name__", "") == "_foreach_copy_":
                seen.append(torch.get_num_threads())
            return super().__torch_function__(func, types, args, kwargs or {})

    torch.set_num_threads(2)
    try:
        targets = [torch.zeros(3), torch.zeros(2)]
        copy_tensors(targets, [torch.ones(3).as_subclass(Probe), torch.full((2,), 2.0)])
        assert [t.tolist() for t in targets] == [[1.0, 1.0, 1.0], [2.0, 2.0]]
        assert seen == [1]
        assert torch.get_num_threads() == 2
        with contextlib.suppress(RuntimeError):
            copy_tensors([torch.zeros(3)], [torch.ones(4)])  # a shape mismatch raises inside the copy
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_large_host_copy_is_shared_among_threads_in_chunks_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the size threshold the copy runs on several threads, big tensors in chunks along their first dimension;
    every byte arrives (into parameters, from strided sources, 0-d and empty tensors too), and an error in a thread
    reaches the caller."""
    monkeypatch.setattr(_weights, "_PARALLEL_BYTES", 0)
    monkeypatch.setattr(_weights, "_CHUNK_BYTES", 64)  # a 100 x 7 float tensor (28 bytes a row) is 50 chunks
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        sources = [
            torch.randn(100, 7, generator=gen),
            torch.randn(7, 100, generator=gen).t(),  # not contiguous
            torch.tensor(3.0),
            torch.empty(0, 5),
            torch.randint(0, 9, (33,), generator=gen),
        ]
        targets = [torch.zeros(s.shape, dtype=s.dtype) for s in sources]
        targets[0] = nn.Parameter(targets[0])  # a restore writes into the module's parameters
        copy_tensors(targets, sources)
        assert all(torch.equal(t, s) for t, s in zip(targets, sources, strict=True))
        with pytest.raises(RuntimeError):
            copy_tensors([torch.zeros(100, 7), torch.zeros(3)], [torch.ones(100, 7), torch.ones(4)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
