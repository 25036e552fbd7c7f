"""The pure detection functions, on modules made in the test."""

from __future__ import annotations

import torch
from torch import nn

from epochkit.init_audit.dead import RING_ROWS, PositiveSums, fold_positive, relu_after_layers
from epochkit.init_audit.symmetry import LayerGroups, find_identical_units, still_identical


def _zero(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    return layer


def test_random_layers_have_no_identical_units() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 200), nn.Conv1d(2, 64, 5), nn.Conv3d(2, 4, 2), nn.Embedding(50, 32))
    assert find_identical_units(net) == []


def test_identical_units_are_found_per_layer_kind() -> None:
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {"linear": nn.Linear(5, 6), "conv": nn.Conv2d(3, 4, 3), "embed": nn.Embedding(7, 5), "free": nn.Linear(4, 4)}
    )
    with torch.no_grad():
        net["linear"].weight[[1, 4]] = net["linear"].weight[0].clone()
        net["linear"].bias[[1, 4]] = net["linear"].bias[0].clone()
        net["linear"].weight[3] = net["linear"].weight[2].clone()  # same weights, different bias: not identical
        net["conv"].weight[2] = net["conv"].weight[0].clone()
        net["conv"].bias[2] = net["conv"].bias[0].clone()
        net["embed"].weight[:, 3] = net["embed"].weight[:, 1].clone()  # Embedding units are its columns
        net["embed"].weight[0] = 0.0  # a padding row makes no group
    found = {g.layer: g.groups for g in find_identical_units(net)}
    assert found == {"linear": [[0, 1, 4]], "conv": [[0, 2]], "embed": [[1, 3]]}


def test_negative_zero_equals_zero_and_nan_equals_nothing() -> None:
    layer = _zero(nn.Linear(3, 4))
    with torch.no_grad():
        layer.weight[1, 0] = -0.0
        layer.weight[2:, 0] = float("nan")
    assert find_identical_units(layer) == [LayerGroups("", 4, [[0, 1]])]


def test_units_of_different_conv_groups_are_never_identical() -> None:
    depthwise = _zero(nn.Conv2d(4, 4, 3, groups=4))  # each filter sees its own channel
    assert find_identical_units(depthwise) == []
    grouped = _zero(nn.Conv2d(4, 8, 3, groups=2))
    assert find_identical_units(grouped) == [LayerGroups("", 8, [[0, 1, 2, 3], [4, 5, 6, 7]])]


def test_frozen_layers_are_not_checked_and_low_precision_is() -> None:
    frozen = _zero(nn.Linear(3, 4)).requires_grad_(False)
    assert find_identical_units(frozen) == []
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert find_identical_units(_zero(nn.Linear(3, 4)).to(dtype))[0].groups == [[0, 1, 2, 3]]


def test_a_group_that_splits_even_partly_is_no_longer_identical() -> None:
    layer = _zero(nn.Linear(3, 6))
    before = find_identical_units(layer)
    with torch.no_grad():
        layer.weight.add_(0.1)  # every unit moved alike
    assert still_identical(layer, before) == before
    with torch.no_grad():
        layer.weight[5, 0] += 1e-3  # one unit of six left the group
    assert still_identical(layer, before) == []


def test_rounding_apart_is_still_identical_and_a_real_split_is_not() -> None:
    layer = _zero(nn.Linear(3, 2))
    before = find_identical_units(layer)
    with torch.no_grad():
        layer.weight.fill_(0.1)
        layer.weight[1, 0] = torch.nextafter(torch.tensor(0.1), torch.tensor(1.0))  # one ulp apart
    assert still_identical(layer, before) == before
    with torch.no_grad():
        layer.weight[1, 0] = 0.1 + 1e-5
    assert still_identical(layer, before) == []


def test_relu_activations_are_paired_with_their_layer_and_fold_positive_finds_positive_units() -> None:
    block = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.ReLU(), nn.Linear(3, 2))
    assert [(a.layer, a.activation, a.channels_first) for a in relu_after_layers(block)] == [("0", "2", True)]
    total = torch.zeros(3, dtype=torch.float64)
    out = torch.zeros(2, 3, 4, 4)
    out[1, 2, 3, 3] = 1.0
    out[0, 1] = float("nan")  # NaN is not positive, and hides no positive value beside it
    out[1, 1, 0, 0] = 1e-30
    assert fold_positive(total, out, channels_first=True)
    assert (total > 0).tolist() == [False, True, True]
    assert fold_positive(total, torch.tensor([[1e-45, 0.0, 0.0]], dtype=torch.float32), channels_first=False)
    assert (total > 0).tolist() == [True, True, True]  # float32's smallest subnormal counts
    total = torch.zeros(3, dtype=torch.float64)
    assert fold_positive(total, torch.tensor([0.0, 0.0, 5e-324], dtype=torch.float64), channels_first=False)
    assert (total > 0).tolist() == [False, False, True]  # so does float64's, of one sample (a 1-d output)
    assert not fold_positive(total, torch.zeros(2, 5), channels_first=False)  # another width: not judged


def test_positive_sums_keep_every_batch_through_ring_wraps_dtypes_and_widths() -> None:
    sums = PositiveSums(torch.zeros(4, dtype=torch.float64), channels_first=True)
    for batch in range(2 * RING_ROWS + 3):  # wraps the ring twice, then a flush folds the rest
        out = torch.zeros(2, 4, 3)
        if batch == 0:
            out[1, 0, 2] = 1.0  # the first batch: folded at the first wrap
        if batch == 2 * RING_ROWS + 1:
            out[0, 3, 0] = float("inf")  # one of the last: folded by the flush
        assert sums.add(out)
    assert sums.add(torch.tensor([[[0.0], [5e-324], [0.0], [0.0]]], dtype=torch.float64))  # another dtype
    assert not sums.add(torch.ones(2, 5, 3))  # another width: not judged, nothing added
    assert (sums.flush() > 0).tolist() == [True, True, False, True]
