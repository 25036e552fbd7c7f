"""``WeightReset``: put a module's parameters and buffers back to a snapshot, in place, and prove it with a checksum.

Pure module-level logic: no Trainer. The cross-validator uses it between folds; it is just as usable alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from epochkit._validation import fail
from epochkit._weights import (
    copy_tensors,
    distinct,
    empty_like_on,
    first_names,
    identity,
    named_tensors,
    ties,
    unwrap_compiled,
)

__all__ = ["WeightReset", "WeightResetError", "reinit_parameters", "unwrap_compiled", "weights_checksum"]


class WeightResetError(RuntimeError):
    """The module does not match its snapshot (or cannot be snapshotted); the message names the tensors."""


def _digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's dtype, shape and raw bytes (so NaNs, -0.0 and bfloat16 are compared exactly)."""
    h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    data = tensor.detach().reshape(-1).contiguous()
    if data.numel():
        h.update(data.cpu().view(torch.uint8).numpy().data)  # the bytes in place (a memoryview), no copy
    return h.hexdigest()


def _check_unsharded(module: nn.Module) -> None:
    # DTensors (FSDP2 fully_shard, tensor parallelism) hold one shard per rank: whole-tensor copies and byte
    # checksums fail on them inside torch with errors that do not say why.
    sharded = [name for name, t in named_tensors(module).items() if type(t).__name__ == "DTensor"]
    if sharded:
        raise WeightResetError(
            f"the module has sharded (DTensor) parameters or buffers {sharded}: WeightReset copies and checksums "
            "whole tensors, so snapshot, restore and verify the module before it is sharded (before fit, which "
            "runs configure_model), or save and reload a distributed checkpoint instead."
        )


def _check_materialised(module: nn.Module) -> None:
    _check_unsharded(module)
    lazy = [name for name, t in named_tensors(module).items() if is_lazy(t)]
    if lazy:
        raise WeightResetError(
            f"the module has uninitialized lazy parameters or buffers {lazy}: materialise them first (run one forward "
            "pass, or set `example_input_array` on the LightningModule) and then take the snapshot."
        )


def _tensor_digests(module: nn.Module) -> dict[str, str]:
    """One digest per distinct tensor, keyed by its first name."""
    slots, tensors = distinct(named_tensors(module))
    return {name: _digest(tensor) for name, tensor in zip(first_names(slots), tensors, strict=True)}


def _combine(digests: dict[str, str], tie_groups: list[list[str]]) -> str:
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}={digests[name]};".encode())
    for group in tie_groups:
        h.update(("tie:" + ",".join(group) + ";").encode())
    return h.hexdigest()


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (bytes, dtype, shape, name) and the tie structure.

    ``torch.compile`` wrappers are looked through, so a compiled module and its original have the same checksum.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> weights_checksum(a) == weights_checksum(b)
        True
    """
    module = unwrap_compiled(module)
    _check_materialised(module)
    return _combine(_tensor_digests(module), ties(named_tensors(module)))


@dataclass
class _Entry:
    name: str
    owner: str  # the submodule path holding it
    attr: str
    is_param: bool
    saved: torch.Tensor


def _split(name: str) -> tuple[str, str]:
    owner, _, attr = name.rpartition(".")
    return owner, attr


class WeightReset:
    """Snapshot a module's weights once, then put them back in place as often as needed, and verify it.

    The snapshot holds a copy of every parameter and every buffer, non-persistent buffers included, keyed by name.
    :meth:`restore` copies the values back *in place* (``Tensor.copy_``, one pass over the bytes, the same tensor
    objects, so optimizers built later and tied weights keep pointing at the right tensors); a tie broken since the
    snapshot (one name re-assigned to its own tensor) is re-tied. Gradients are dropped (``grad = None``) so nothing
    from a previous run leaks into the next one. :meth:`verify` recomputes the checksum and names every tensor that
    differs.

    Args:
        device: Where the snapshot lives: ``None`` keeps each copy on its tensor's device (fastest restore),
            ``"cpu"`` keeps accelerator memory free.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> reset = WeightReset()
        >>> before = reset.snapshot(net)
        >>> _ = net(torch.randn(8, 4)).sum().backward()  # moves BatchNorm's running stats
        >>> with torch.no_grad():
        ...     _ = net[0].weight.add_(1.0)
        >>> reset.restore(net)
        >>> reset.verify(net) == before
        True
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        if device is not None:
            allowed = "None, a torch.device or a device string such as 'cpu' or 'cuda:0'"
            if not isinstance(device, str | torch.device):
                fail("WeightReset", "device", device, allowed, TypeError)
            try:
                torch.device(device)
            except RuntimeError:
                fail("WeightReset", "device", device, allowed)
        self.device = device
        self._entries: list[_Entry] = []
        self._ties: list[list[str]] = []
        self._digests: dict[str, str] = {}
        self.checksum_: str | None = None

    # ------------------------------------------------------------------------------------------------ API
    def snapshot(self, module: nn.Module) -> str:
        """Copy every parameter and buffer of ``module``; return the checksum of the snapshot.

        Raises:
            WeightResetError: If the module has lazy (unmaterialised) or sharded (DTensor) parameters or buffers.
        """
        module = unwrap_compiled(module)
        _check_materialised(module)
        named = named_tensors(module)
        slots, tensors = distinct(named)
        saved = empty_like_on(tensors, self.device)
        copy_tensors(saved, tensors)
        params = {id(p) for p in module.parameters()}
        self._entries = [
            _Entry(name, *_split(name), id(tensor) in params, copy)
            for name, tensor, copy in zip(first_names(slots), tensors, saved, strict=True)
        ]
        self._ties = ties(named)
        self._digests = _tensor_digests(module)
        self.checksum_ = _combine(self._digests, self._ties)
        return self.checksum_

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        """Copy the snapshot back into ``module`` in place and drop its gradients.

        Raises:
            WeightResetError: Before any copy, if no snapshot was taken, the module's tensors do not match the
                snapshot's names and shapes, or they are sharded (DTensor).
        """
        if self.checksum_ is None:
            raise WeightResetError("restore() called before snapshot(): there is nothing to restore.")
        module = unwrap_compiled(module)
        _check_unsharded(module)
        self._retie(module)
        current = named_tensors(module)
        problems = []
        for e in self._entries:
            t = current.get(e.name)
            if t is None:
                problems.append(f"{e.name}: missing")
            elif t.shape != e.saved.shape or t.dtype != e.saved.dtype:
                problems.append(
                    f"{e.name}: {tuple(t.shape)} {t.dtype}, snapshot {tuple(e.saved.shape)} {e.saved.dtype}"
                )
        extra = sorted(set(current) - {e.name for e in self._entries} - {n for g in self._ties for n in g})
        problems += [f"{name}: not in the snapshot" for name in extra]
        if problems:
            raise WeightResetError("the module no longer matches its snapshot: " + "; ".join(problems))
        copy_tensors([current[e.name] for e in self._entries], [e.saved for e in self._entries])
        for e in self._entries:
            if e.is_param:
                current[e.name].grad = None

    def verify(self, module: nn.Module) -> str:
        """Return the module's checksum, after checking it equals the snapshot's.

        Raises:
            WeightResetError: If it differs, naming every tensor (or tie) that differs.
        """
        if self.checksum_ is None:
            raise WeightResetError("verify() called before snapshot(): there is nothing to compare with.")
        module = unwrap_compiled(module)
        _check_materialised(module)
        digests = _tensor_digests(module)
        now_tied = ties(named_tensors(module))
        checksum = _combine(digests, now_tied)
        if checksum != self.checksum_:
            differ = sorted(n for n in set(digests) | set(self._digests) if digests.get(n) != self._digests.get(n))
            detail = [f"tensors that differ: {differ}"] if differ else []
            if now_tied != self._ties:
                detail.append(f"ties differ: now {now_tied}, snapshot {self._ties}")
            raise WeightResetError(
                f"weights checksum {checksum[:12]} != snapshot {self.checksum_[:12]}; {'; '.join(detail)}"
            )
        return checksum

    @property
    def nbytes(self) -> int:
        """Bytes held by the snapshot."""
        return sum(e.saved.numel() * e.saved.element_size() for e in self._entries)

    # ------------------------------------------------------------------------------------------- internals
    def _retie(self, module: nn.Module) -> None:
        for group in self._ties:
            owner_name, attr = _split(group[0])
            try:
                anchor = getattr(module.get_submodule(owner_name), attr)
            except AttributeError:
                continue  # reported as missing by restore()
            for name in group[1:]:
                owner_name, attr = _split(name)
                owner = module.get_submodule(owner_name)
                alias = getattr(owner, attr, None)
                if not isinstance(alias, torch.Tensor) or identity(alias) != identity(anchor):
                    setattr(owner, attr, anchor)  # the tie was broken since the snapshot


def _reset_method(module: nn.Module) -> Callable[[], object] | None:
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


@torch.no_grad()
def reinit_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter by calling each submodule's ``reset_parameters`` under ``torch`` seed ``seed``.

    The global RNG state is left as it was. Coverage is checked for real: every parameter is first filled with NaN,
    and any parameter still NaN after all ``reset_parameters`` (or ``_reset_parameters``) calls is one that no
    reset covers.

    Raises:
        WeightResetError: Listing every parameter no ``reset_parameters`` re-initialised (its values are then NaN;
            restore a snapshot to recover).
    """
    module = unwrap_compiled(module)
    _check_materialised(module)
    params = dict(module.named_parameters())
    for p in params.values():
        if p.is_floating_point() or p.is_complex():
            p.fill_(float("nan"))
    devices = sorted({p.device for p in params.values() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for sub in module.modules():
            fn = _reset_method(sub)
            if fn is not None:
                fn()
    uncovered = [name for name, p in params.items() if (p.is_floating_point() or p.is_complex()) and p.isnan().any()]
    if uncovered:
        raise WeightResetError(
            "reset='reinit' needs every parameter re-initialised by some module's `reset_parameters`, but none "
            f"covers {uncovered}; add `reset_parameters` to their modules or use reset='snapshot'."
        )
