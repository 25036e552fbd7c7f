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


def test_copy_tensors_copies_every_pair_across_dtypes_of_the_same_device() -> None:
    targets = [torch.zeros(2), torch.zeros(3, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)]
    sources = [torch.ones(2), torch.full((3,), 2.0, dtype=torch.float64), torch.tensor([7])]
    copy_tensors(targets, sources)
    assert all(torch.equal(t, s) for t, s in zip(targets, sources, strict=True))
