"""The one weight-copy engine (``epochkit._weights``) that ``HostWeights`` and ``WeightReset`` share: one tie rule,
one copy path."""

from __future__ import annotations

import torch
from torch import nn

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
