"""The one engine that copies a module's weights: every parameter and buffer, ties found once, copied in one fused
call per pair of devices.

Two users: :class:`epochkit.stopping.HostWeights` (the best weights of ``EarlyStopping(restore_best_weights=True)``,
in host memory) and :class:`epochkit.cv.WeightReset` (the snapshot a fold starts from). Both take their tensors from
:func:`named_tensors`, group tied names with :func:`distinct`, allocate their copy with :func:`empty_like_on` and move
bytes with :func:`copy_tensors`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module under ``torch.compile``'s ``OptimizedModule`` wrappers (the module itself when not compiled).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> unwrap_compiled(layer) is layer
        True
    """
    while isinstance(getattr(module, "_orig_mod", None), nn.Module):
        module = module._orig_mod  # type: ignore[assignment]
    return module


def named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and every buffer (non-persistent ones too, which ``state_dict()`` leaves out) under every
    name, tied aliases included, parameters first."""
    named: dict[str, Tensor] = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    return named


def identity(tensor: Tensor) -> tuple[Any, ...]:
    """The tie rule: two names are one tensor when they view the same bytes the same way (device, storage, offset,
    shape, strides, dtype). That covers one Parameter under two names (``head.weight = embed.weight``) and two
    objects over one storage alike. Empty tensors are never tied (they may all report storage pointer 0)."""
    if tensor.numel() == 0:
        return ("empty", id(tensor))
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def distinct(named: Mapping[str, Tensor]) -> tuple[dict[str, int], list[Tensor]]:
    """``(slot of each name, the distinct tensors)``: tied names share one slot, in first-seen order.

    Example:
        >>> a = nn.Linear(2, 2)
        >>> net = nn.ModuleDict({"a": a, "b": nn.Linear(2, 2)})
        >>> net["b"].weight = a.weight
        >>> slots, tensors = distinct(named_tensors(net))
        >>> slots["b.weight"] == slots["a.weight"], len(tensors)
        (True, 3)
    """
    slots: dict[str, int] = {}
    first: dict[tuple[Any, ...], int] = {}
    tensors: list[Tensor] = []
    for name, tensor in named.items():
        key = identity(tensor)
        if key not in first:
            first[key] = len(tensors)
            tensors.append(tensor)
        slots[name] = first[key]
    return slots, tensors


def first_names(slots: Mapping[str, int]) -> list[str]:
    """The first name of each slot of :func:`distinct`, in slot order."""
    names: dict[int, str] = {}
    for name, slot in slots.items():
        names.setdefault(slot, name)
    return [names[slot] for slot in range(len(names))]


def ties(named: Mapping[str, Tensor]) -> list[list[str]]:
    """The groups of names that are one tensor (by :func:`identity`), each sorted, sorted."""
    groups: dict[int, list[str]] = {}
    slots = distinct(named)[0]
    for name, slot in slots.items():
        groups.setdefault(slot, []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def empty_like_on(tensors: Sequence[Tensor], device: torch.device | str | None) -> list[Tensor]:
    """Uninitialised tensors of the same shapes and dtypes on ``device`` (``None``: each tensor's own). Host memory
    that will hold copies of CUDA tensors is pinned, so that the copies run asynchronously at full bandwidth."""
    out = []
    for tensor in tensors:
        target = tensor.device if device is None else torch.device(device)
        pin = target.type == "cpu" and tensor.is_cuda and torch.cuda.is_available()
        out.append(torch.empty(tensor.shape, dtype=tensor.dtype, device=target, pin_memory=pin))
    return out


@torch.no_grad()
def copy_tensors(targets: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """``target.copy_(source)`` for every pair, as one fused ``torch._foreach_copy_`` per (target device, source
    device) pair: the same bytes as one big copy, without a Python loop per tensor. Copies between the host and a GPU
    are issued asynchronously (``non_blocking``) and waited for once at the end, so the host copy is complete when
    this returns. Copies from host to host: see :func:`_copy_on_host`.
    """
    groups: dict[tuple[torch.device, torch.device], tuple[list[Tensor], list[Tensor]]] = {}
    for target, source in zip(targets, sources, strict=True):
        pair = groups.setdefault((target.device, source.device), ([], []))
        pair[0].append(target)
        pair[1].append(source.detach())
    cuda_devices: set[torch.device] = set()
    for (target_device, source_device), (group_targets, group_sources) in groups.items():
        across = target_device != source_device
        if target_device.type == source_device.type == "cpu":
            _copy_on_host(group_targets, group_sources)
        else:
            torch._foreach_copy_(group_targets, group_sources, non_blocking=across)
        cuda_devices.update(d for d in (target_device, source_device) if across and d.type == "cuda")
    for device in cuda_devices:
        torch.cuda.synchronize(device)


# Host-to-host copies of at least this many bytes are shared among threads (_copy_on_host); a tensor bigger than a
# chunk is split into chunks along its first dimension, so that the threads' shares even out.
_PARALLEL_BYTES = 32 * 2**20
_CHUNK_BYTES = 8 * 2**20
_MAX_COPY_THREADS = 4  # memory bandwidth is saturated well before this many threads


def _copy_on_host(targets: list[Tensor], sources: list[Tensor]) -> None:
    """Copy host tensors to host tensors, each ``copy_`` on one torch thread.

    On torch's own threads each tensor's copy is a parallel region that waits at its end for the slowest thread: on
    a machine where another process holds a core, a thread gets descheduled at every tensor, and the copy of a
    100M-parameter model took 3-6x one ``copy_`` of the same bytes in one tensor (``benchmarks/early_stopping.py``).
    Instead, up to ``min(torch.get_num_threads(), 4)`` Python threads (torch releases the GIL while it copies) take
    tensors (or chunks of big ones) from one shared list until it is empty, each on one torch thread: a descheduled
    thread delays only the piece it holds. Small copies run on the calling thread alone.
    """
    threads = min(torch.get_num_threads(), _MAX_COPY_THREADS)
    total = sum(t.numel() * t.element_size() for t in targets)
    if threads <= 1 or total < _PARALLEL_BYTES:
        with _one_torch_thread():
            torch._foreach_copy_(targets, sources)
        return
    pieces: list[tuple[Tensor, Tensor]] = []
    for target, source in zip(targets, sources, strict=True):
        if target.shape != source.shape:  # copy_ broadcasts; chunks would not: let torch decide, whole
            pieces.append((target, source))
            continue
        rows = target.shape[0] if target.dim() else 1
        row_bytes = target.numel() * target.element_size() // max(rows, 1)
        step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        if target.dim() == 0 or rows <= step:
            pieces.append((target, source))
            continue
        pieces.extend(
            (target.narrow(0, a, min(step, rows - a)), source.narrow(0, a, min(step, rows - a)))
            for a in range(0, rows, step)
        )
    queue = iter(pieces)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        with _one_torch_thread(), torch.no_grad():  # grad mode is per thread: a new one has it on
            while not errors:
                with lock:
                    piece = next(queue, None)
                if piece is None:
                    return
                try:
                    piece[0].copy_(piece[1])
                except BaseException as err:  # re-raised on the calling thread
                    errors.append(err)

    helpers = [threading.Thread(target=work, name="epochkit-copy", daemon=True) for _ in range(threads - 1)]
    for helper in helpers:
        helper.start()
    try:
        work()
    finally:
        for helper in helpers:
            helper.join()
    if errors:
        raise errors[0]


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the count.

    Each ``copy_`` on several torch threads is a parallel region that waits at its end for the slowest of them (see
    :func:`_copy_on_host`); on one thread a copy waits for nobody. (With OpenMP, torch's backend, the count is the
    calling thread's own setting.)
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
