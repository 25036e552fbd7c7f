"""Identical output units of a layer: pure functions over modules and tensors, no Trainer.

A layer's *units* are its output features: the rows of a ``Linear`` weight (with their bias), the filters of a
convolution (with their bias; units of different ``groups`` see different inputs and never count as identical), and
the columns of an ``Embedding`` weight (output feature ``j`` is column ``j`` for every token). Units that start
identical receive identical gradients as long as everything downstream treats them alike, and then stay identical
for ever: the layer works as one unit.

Finding them costs a handful of operations for the whole model, whatever its depth: each unit's bias and a sample
of its inputs copied into one float64 table (two copies per layer), that table projected on a fixed vector (one
matrix-vector product) with each row's largest magnitude (the rounding bound), one host transfer of both, the
sorting of the projections on the host, and an exact comparison of the few units whose projections agree. Nothing
here draws from any random generator.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: The layers whose units are compared.
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)

#: Units whose projections differ by at most this, relative to a bound on the sum of the absolute terms, are
#: compared exactly: it absorbs float64 rounding of two dot products over identical numbers summed in different
#: orders (about 1e-16 per term), and almost never lets two random units through.
_CANDIDATE_RTOL = 1e-11
#: A projection reads at most this many inputs of each unit, in a few contiguous blocks (see :func:`sampled_blocks`).
SAMPLED_INPUTS = 64
_BLOCKS = 4
#: Columns of a unit's row in the sampled table: its sampled inputs (zero-padded) and its bias, last.
_WIDTH = SAMPLED_INPUTS + 1
#: Consecutive layers share one pass of the table up to this many units (a wider layer gets a pass of its own), and
#: the passes reuse one buffer: small models pay a few operations in all, large ones touch a few MB, not the model's
#: whole table.
_CHUNK_UNITS = 4096
#: After ``steps`` optimizer steps, units count as still identical when they differ by at most this many units in
#: the last place of their largest value (identical updates, summed in different orders, round apart slightly).
ULP_TOLERANCE = 16


def checked_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, layer)`` for every layer of :data:`LAYER_TYPES` in ``module`` whose weight is trainable (a
    floating-point weight with ``requires_grad``), by its module path (``net.0``); a layer reached twice (shared)
    is listed once.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> net[2].weight.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter containing:
        ...
        >>> [path for path, _ in checked_layers(net)]
        ['0']
    """
    for path, layer in module.named_modules():
        if not isinstance(layer, LAYER_TYPES):
            continue
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.requires_grad:
            yield path, layer


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """A checked layer's weight (a tensor: :func:`checked_layers` lists no other)."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def unit_count(layer: nn.Module) -> int:
    """How many output units ``layer`` has."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[1] if isinstance(layer, nn.Embedding) else weight.shape[0])


def unit_partition(layer: nn.Module) -> np.ndarray | None:
    """For a grouped convolution, each unit's group (units of different groups see different inputs); else None."""
    groups = int(getattr(layer, "groups", 1) or 1)
    if groups <= 1:
        return None
    return np.arange(unit_count(layer)) // (unit_count(layer) // groups)


#: The probe on each device it was used on, with the sum of its absolute values: made once, reused by every check.
_PROBES: dict[str, tuple[torch.Tensor, float]] = {}


def _probe(device: torch.device) -> tuple[torch.Tensor, float]:
    """A fixed float64 vector of :data:`_WIDTH` values spread over [-1, 1) (the golden-ratio sequence: no random
    draw) on ``device``, and the sum of its absolute values (made on the host: no device synchronisation)."""
    cached = _PROBES.get(str(device))
    if cached is None:
        k = torch.arange(1, _WIDTH + 1, dtype=torch.float64)
        probe = (k * 0.6180339887498949) % 1.0 * 2.0 - 1.0
        cached = _PROBES[str(device)] = (probe.to(device), float(probe.abs().sum()))
    return cached


def sampled_blocks(length: int) -> list[tuple[int, int]]:
    """The input positions a projection reads, as ``(start, width)`` blocks: all of them up to
    :data:`SAMPLED_INPUTS`, else that many in :data:`_BLOCKS` contiguous blocks evenly spaced over the row (a few
    cache lines per unit instead of the whole weight, read as one strided view).

    Identical units agree on any subset of their inputs, so sampling can only add candidates, which the exact
    comparison then drops; it never misses a group.

    Example:
        >>> sampled_blocks(60)
        [(0, 60)]
        >>> sampled_blocks(4096)
        [(0, 16), (1360, 16), (2720, 16), (4080, 16)]
    """
    if length <= SAMPLED_INPUTS:
        return [(0, length)]
    width = SAMPLED_INPUTS // _BLOCKS
    step = (length - width) // (_BLOCKS - 1)
    return [(i * step, width) for i in range(_BLOCKS)]


def sample_units(layer: nn.Module, out: torch.Tensor | None = None) -> torch.Tensor:
    """Each unit's sampled incoming weights (:func:`sampled_blocks`, in the first columns) and bias (last column),
    one float64 row of :data:`_WIDTH` values per unit, written into ``out`` (zero-filled, ``(units, _WIDTH)``,
    float64, on the weight's device; None: a new tensor; every value is written). One copy of a strided view of the
    weight, one of the bias;
    both read detached tensors, so no graph is recorded (and no ``no_grad`` context is needed).

    Example:
        >>> layer = nn.Linear(100, 3)
        >>> sample = sample_units(layer)
        >>> sample.shape, bool((sample[:, 16:32] == layer.weight[:, 28:44]).all())
        (torch.Size([3, 65]), True)
        >>> bool((sample[:, -1] == layer.bias).all())
        True
    """
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    embedding = isinstance(layer, nn.Embedding)
    # An Embedding's units are its columns: its rows (tokens) are sampled, each block contiguous.
    table = weight.detach() if embedding else weight.detach().reshape(weight.shape[0], -1)
    units, inputs = (table.shape[1], table.shape[0]) if embedding else (table.shape[0], table.shape[1])
    if out is None:
        out = torch.empty(units, _WIDTH, dtype=torch.float64, device=weight.device)
    blocks = sampled_blocks(inputs)
    if inputs < SAMPLED_INPUTS:
        out[:, inputs:SAMPLED_INPUTS].zero_()
    if len(blocks) == 1:
        out[:, :inputs].copy_(table.t() if embedding else table)
    else:  # the blocks as one (units, blocks, width) strided view, copied (and converted) in one operation
        width = SAMPLED_INPUTS // _BLOCKS
        windows = table.unfold(0 if embedding else 1, width, blocks[1][0])
        windows = windows[:_BLOCKS].permute(1, 0, 2) if embedding else windows[:, :_BLOCKS]
        out[:, :SAMPLED_INPUTS].view(units, _BLOCKS, width).copy_(windows)
    bias = None if embedding else getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        out[:, -1].copy_(bias.detach())
    else:
        out[:, -1].zero_()
    return out


@torch.no_grad()
def project_units(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's bias and sampled incoming weights (:func:`sample_units`) projected on a fixed vector, in float64
    on the weight's device, and the scale of each projection's rounding (a bound on any of its terms' size).
    Identical units get projections equal to within float64 rounding of that scale.

    Example:
        >>> layer = nn.Linear(3, 4)
        >>> _ = nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
        >>> projection, scale = project_units(layer)
        >>> projection.tolist(), scale.tolist()
        ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    """
    sample = sample_units(layer)
    probe, weight = _probe(sample.device)
    return sample @ probe, sample.abs().amax(dim=1) * weight


@torch.no_grad()
def unit_rows(layer: nn.Module, units: torch.Tensor | None = None) -> torch.Tensor:
    """The incoming weights (and bias, as a last column) of the ``units`` (indices; None: all, without a copy when
    the layer has no bias) of ``layer``, one row per unit, on the weight's device."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(layer, nn.Embedding):
        table = weight.detach().t()
        return table if units is None else table[units.to(weight.device)]
    rows = weight.detach().reshape(weight.shape[0], -1)
    if units is not None:
        rows = rows[units.to(weight.device)]
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        column = bias.detach() if units is None else bias.detach()[units.to(weight.device)]
        rows = torch.cat([rows, column.unsqueeze(1).to(rows.dtype)], dim=1)
    return rows


def _members(layer: nn.Module, group: list[int] | np.ndarray) -> torch.Tensor | None:
    """Indices for :func:`unit_rows`: None when ``group`` is every unit in order (no gather needed)."""
    members = np.asarray(group)
    if members.size == unit_count(layer) and members[0] == 0 and members[-1] == members.size - 1:
        return None  # sorted, distinct and spanning every index: every unit in order
    return torch.as_tensor(members, dtype=torch.long)


def candidate_groups(
    projection: np.ndarray, scale: float | np.ndarray, partition: np.ndarray | None = None
) -> list[np.ndarray]:
    """Runs of units whose projections (:func:`project_units`) agree within rounding of ``scale`` (one bound, or one
    per unit: a pair is bounded by the larger of its two) and share a partition, as index arrays of two or more
    units: the only units that can be identical. Vectorised: no Python work per unit.

    Example:
        >>> values = np.array([0.5, 0.0, 0.5, 0.2, 0.0])
        >>> [g.tolist() for g in candidate_groups(values, 1.0)]
        [[1, 4], [0, 2]]
        >>> candidate_groups(values[[0, 2]], 1.0, partition=np.array([0, 1]))
        []
    """
    if projection.size < 2:
        return []
    keys = np.zeros(projection.size, np.int64) if partition is None else partition.astype(np.int64)
    order = np.lexsort((projection, keys))
    values, parts = projection[order], keys[order]
    tolerance = _CANDIDATE_RTOL * (scale[order] if isinstance(scale, np.ndarray) else np.full(order.size, scale))
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, never close (as a NaN projection)
        close = (parts[1:] == parts[:-1]) & (
            np.abs(values[1:] - values[:-1]) <= np.maximum(tolerance[1:], tolerance[:-1])
        )
    if not close.any():
        return []
    ends = np.flatnonzero(~close) + 1  # where a run ends: runs are order[start:stop]
    starts, stops = np.concatenate(([0], ends)), np.concatenate((ends, [projection.size]))
    return [np.sort(order[a:b]) for a, b in zip(starts, stops, strict=True) if b - a > 1]


@torch.no_grad()
def exact_groups(layer: nn.Module, candidates: list[np.ndarray]) -> list[list[int]]:
    """The groups of units of ``layer`` that are exactly identical (weights and bias), among ``candidates``
    (:func:`candidate_groups`), each sorted, largest first.

    Each candidate is compared with its first unit, then what is left with its own first unit, and so on: one pass
    when the candidate is one group, as it nearly always is. ``-0.0`` equals ``0.0``; a unit holding NaN equals no
    other.
    """
    found: list[list[int]] = []
    for members in candidates:
        remaining = np.asarray(members)
        while remaining.size > 1:
            rows = unit_rows(layer, _members(layer, remaining))
            same = (rows == rows[0]).all(dim=1).cpu().numpy()  # a unit holding NaN differs even from itself
            group = remaining[same]
            if group.size > 1:
                found.append(group.tolist())  # sorted, as the candidates are
            remaining = remaining[~same][1:] if not same[0] else remaining[~same]
    return sorted(found, key=lambda g: (-len(g), g[0]))


@dataclass
class LayerGroups:
    """The identical-unit groups of one layer.

    Attributes:
        layer: The layer's module path (``net.0``).
        units: How many units the layer has.
        groups: Each group's unit indices (two or more, sorted), largest group first.
    """

    layer: str
    units: int
    groups: list[list[int]]

    @property
    def grouped_units(self) -> int:
        """How many units are in some group."""
        return sum(len(g) for g in self.groups)

    def to_dict(self) -> dict[str, object]:
        """Plain data for checkpoints (the groups as int64 tensors: a zero-initialised layer of 50,000 units holds a
        group of 50,000)."""
        return {
            "layer": self.layer,
            "units": self.units,
            "groups": [torch.tensor(g, dtype=torch.int64) for g in self.groups],
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LayerGroups:
        """Inverse of :meth:`to_dict`."""
        groups = data.get("groups") or []
        assert isinstance(groups, list)
        units = int(data["units"])  # type: ignore[call-overload]
        return cls(str(data["layer"]), units, [np.asarray(g, dtype=np.int64).tolist() for g in groups])


def find_identical_units(module: nn.Module) -> list[LayerGroups]:
    """Every checked layer of ``module`` (:func:`checked_layers`) that has identical units, with its groups.

    One host transfer for the whole module (the projections), then an exact comparison of the candidates.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> _ = nn.init.zeros_(net[0].weight), nn.init.zeros_(net[0].bias)
        >>> find_identical_units(net)
        [LayerGroups(layer='0', units=3, groups=[[0, 1, 2]])]
    """
    layers = list(checked_layers(module))
    if not layers:
        return []
    device = layer_weight(layers[0][1]).device
    units = [unit_count(layer) for _, layer in layers]
    starts = [0, *itertools.accumulate(units)]
    # Every layer's sampled units, one row each, in a table: projected and bounded in one operation a pass.
    passes, first = [], 0
    for i in range(1, len(layers)):
        if starts[i] - starts[first] + units[i] > _CHUNK_UNITS:
            passes.append((first, i))
            first = i
    passes.append((first, len(layers)))
    rows = max(starts[b] - starts[a] for a, b in passes)
    table = torch.empty(rows, _WIDTH, dtype=torch.float64, device=device)  # every value written below
    probe, weight = _probe(device)
    results = torch.empty(2, starts[-1], dtype=torch.float64, device=device)
    for a, b in passes:
        for i in range(a, b):
            layer, out = layers[i][1], table[starts[i] - starts[a] : starts[i + 1] - starts[a]]
            if layer_weight(layer).device == device:
                sample_units(layer, out)
            else:  # a layer on another device (a model split across devices)
                out.copy_(sample_units(layer))
        used = table[: starts[b] - starts[a]]
        torch.mv(used, probe, out=results[0, starts[a] : starts[b]])
        torch.amax(used.abs(), dim=1, out=results[1, starts[a] : starts[b]])  # (vector_norm(inf) is 10x slower)
    projection, largest = results.cpu().numpy()  # the one host transfer
    # Units of different layers (or of different groups of a grouped convolution) never pair up.
    keys = np.repeat(np.arange(len(layers), dtype=np.int64) << 32, units)
    for (_, layer), a, b in zip(layers, starts, starts[1:], strict=False):
        partition = unit_partition(layer)
        if partition is not None:
            keys[a:b] += partition
    by_layer: dict[int, list[np.ndarray]] = {}
    for group in candidate_groups(projection, largest * weight, keys):
        index = bisect.bisect_right(starts, int(group[0])) - 1
        by_layer.setdefault(index, []).append(group - starts[index])
    found = []
    for index, candidates in sorted(by_layer.items()):
        path, layer = layers[index]
        groups = exact_groups(layer, candidates)
        if groups:
            found.append(LayerGroups(path, units[index], groups))
    return found


@torch.no_grad()
def still_identical(module: nn.Module, before: list[LayerGroups]) -> list[LayerGroups]:
    """Of the groups found earlier (``before``), those whose units are all still identical now, by layer (layers
    with none left are omitted).

    A group counts as still identical when, for every input, its units' weights span at most
    :data:`ULP_TOLERANCE` units in the last place of the group's largest value: units that receive identical
    updates stay equal up to rounding. A group that split, even partly, is being differentiated by its gradients.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> _ = nn.init.zeros_(net[0].weight), nn.init.zeros_(net[0].bias)
        >>> before = find_identical_units(net)
        >>> still_identical(net, before) == before
        True
        >>> _ = net[0].weight.data[2].add_(0.1)
        >>> still_identical(net, before)
        []
    """
    layers = dict(checked_layers(module))
    verdicts: list[tuple[LayerGroups, torch.Tensor]] = []
    for entry in before:
        layer = layers.get(entry.layer)
        if layer is None or not entry.groups:
            continue
        eps = torch.finfo(layer.weight.dtype).eps  # type: ignore[arg-type]
        per_group = []
        for group in entry.groups:
            rows = unit_rows(layer, _members(layer, group))
            high, low = rows.amax(dim=0), rows.amin(dim=0)  # per input: no copy of the rows
            spread = (high - low).amax()
            tolerance = ULP_TOLERANCE * eps * torch.maximum(high.abs(), low.abs()).amax()
            per_group.append(spread <= tolerance)
        verdicts.append((entry, torch.stack(per_group)))
    if not verdicts:
        return []
    flags = torch.cat([v.to(verdicts[0][1].device) for _, v in verdicts]).cpu().numpy()  # one host transfer
    kept = []
    start = 0
    for entry, verdict in verdicts:
        mask = flags[start : start + verdict.numel()]
        start += verdict.numel()
        groups = [g for g, same in zip(entry.groups, mask, strict=True) if same]
        if groups:
            kept.append(LayerGroups(entry.layer, entry.units, groups))
    return kept
