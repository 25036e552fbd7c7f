"""WeightReset and reinit on real modules: parameters, buffers (non-persistent too), ties, lazy and compiled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from epochkit.cv import WeightReset, WeightResetError, reinit_parameters, weights_checksum


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.ones(4), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(idx)) * self.scale)


def _train_a_bit(net: nn.Module) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.arange(8)).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        net.scale.mul_(3.0)


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in [*net.named_parameters(), *net.named_buffers()]}


def test_restore_puts_back_parameters_and_all_buffers_in_place_and_keeps_ties() -> None:
    torch.manual_seed(0)
    net = Tied()
    before = _state(net)
    reset = WeightReset()
    checksum = reset.snapshot(net)
    ptrs = {k: v.data_ptr() for k, v in [*net.named_parameters(), *net.named_buffers()]}
    _train_a_bit(net)
    assert not torch.equal(net.embed.weight, before["embed.weight"])
    assert not torch.equal(net.norm.running_mean, before["norm.running_mean"])
    assert not torch.equal(net.scale, before["scale"])  # non-persistent buffer
    assert net.embed.weight.grad is not None

    reset.restore(net)

    after = _state(net)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert {k: v.data_ptr() for k, v in [*net.named_parameters(), *net.named_buffers()]} == ptrs  # in place
    assert net.head.weight is net.embed.weight
    assert net.embed.weight.grad is None
    assert reset.verify(net) == checksum == weights_checksum(net)


def test_a_broken_tie_is_retied() -> None:
    net = Tied()
    reset = WeightReset()
    reset.snapshot(net)
    net.head.weight = nn.Parameter(net.embed.weight.detach().clone())
    with pytest.raises(WeightResetError, match="ties differ"):
        reset.verify(net)
    reset.restore(net)
    assert net.head.weight is net.embed.weight
    reset.verify(net)


def test_verify_names_the_tensors_that_differ() -> None:
    net = Tied()
    reset = WeightReset()
    reset.snapshot(net)
    with torch.no_grad():
        net.norm.running_var.add_(1.0)
    with pytest.raises(WeightResetError, match=r"norm\.running_var"):
        reset.verify(net)


def test_restore_refuses_a_module_of_another_shape() -> None:
    reset = WeightReset()
    reset.snapshot(nn.Linear(3, 2))
    with pytest.raises(WeightResetError, match=r"weight: \(2, 4\)"):
        reset.restore(nn.Linear(4, 2))
    with pytest.raises(WeightResetError, match="before snapshot"):
        WeightReset().restore(nn.Linear(3, 2))


def test_lazy_modules_must_be_materialised_first() -> None:
    net = nn.Sequential(nn.LazyLinear(3))
    with pytest.raises(WeightResetError, match=r"lazy.*\['0.weight', '0.bias'\]"):
        WeightReset().snapshot(net)
    net(torch.zeros(2, 5))
    reset = WeightReset()
    checksum = reset.snapshot(net)
    with torch.no_grad():
        net[0].weight.zero_()
    reset.restore(net)
    assert reset.verify(net) == checksum


def test_compiled_module_has_the_checksum_of_its_original_and_restores() -> None:
    net = nn.Linear(4, 2)
    compiled = torch.compile(net, backend="eager")
    assert weights_checksum(compiled) == weights_checksum(net)
    reset = WeightReset()
    checksum = reset.snapshot(compiled)
    compiled(torch.ones(3, 4)).sum().backward()
    with torch.no_grad():
        net.weight.add_(1.0)
    reset.restore(compiled)
    assert reset.verify(net) == checksum


def test_reinit_is_seeded_per_fold_and_leaves_the_global_rng_alone() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    state = torch.get_rng_state()
    reinit_parameters(net, seed=1)
    first = weights_checksum(net)
    reinit_parameters(net, seed=2)
    second = weights_checksum(net)
    reinit_parameters(net, seed=1)
    assert weights_checksum(net) == first != second
    assert torch.equal(torch.get_rng_state(), state)


class _Uncovered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.gain = nn.Parameter(torch.ones(2))  # no reset_parameters covers it
        self.bias2 = nn.Parameter(torch.zeros(2))


def test_reinit_lists_every_parameter_no_reset_parameters_covers() -> None:
    with pytest.raises(WeightResetError, match=r"covers \['gain', 'bias2'\]"):
        reinit_parameters(_Uncovered(), seed=0)
