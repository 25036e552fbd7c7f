"""GPU proof: epochkit's hot paths on one CUDA device, in one run that writes every figure and check as JSON.

Sections (``--sections`` picks some, by name or number; the JSON is rewritten after each one):

1. ``syncs``: host syncs caused by epochkit in per-batch hooks, counted under
   ``torch.cuda.set_sync_debug_mode("warn")`` while a small conv net trains (bf16 autocast, fused AdamW with a tensor
   LR, and the ``capturable=True`` variant) with ShuffleAudit (sampler indices; content fingerprints), LRWarmup and
   EarlyStopping(restore_best_weights=True). Required: 0, and no more per-batch syncs in all than without the
   callbacks. Per-epoch syncs are listed. A positive control (known syncs from a probe) proves the counter counts.
2. ``overhead``: median step time with all callbacks / none, GPU-bound steps, interleaved repeats (target <= 1.02);
   the audit's host cost per batch in microseconds (hook; sampler recorder).
3. ``copies``: best-weight capture (``HostWeights``) of a ~1B-parameter model into pinned host memory / one plain
   ``copy_`` of the same bytes into a pinned buffer (target <= 1.1; GB/s); the first capture's allocation time;
   ``WeightReset.restore`` / one plain copy on the device.
4. ``fingerprints``: on-device fingerprints of batches, GB/s against the device's copy GB/s; identical to the CPU's.
5. ``correctness``: the LR each step used with tensor LRs scaled in place equals the CPU formula step for step;
   ShuffleAudit leaves the final weights bit-identical (deterministic algorithms).
6. ``sharded``: one GPU, ``devices=1``: ``FSDPStrategy`` (plain and auto-wrapped) restores the best epoch's weights,
   ``FSDPStrategy(use_orig_params=False)`` is refused at setup; ``ModelParallelStrategy`` with ``fully_shard``
   (DTensors) refuses ``restore_best_weights=True`` at setup and restores with ``"checkpoint"``; LRWarmup scales
   every param group, ShuffleAudit stays quiet, WeightReset round-trips (FSDP) or refuses DTensors clearly.
7. ``init_audit``: ``InitAudit`` on the device: host syncs it causes in per-batch hooks during the first epoch
   (required: 0; its per-epoch transfers listed), counted as in section 1; the first epoch's time (from
   ``on_train_start``, so the step-0 check counts) with it / without, GPU-bound steps, interleaved repeats (target
   <= 1.01); quiet on the default-initialised conv net, an all-zero one caught (``symmetric_units`` in ``net.0``);
   refused at setup under ``ModelParallelStrategy``.

Run on a GPU machine (about 3 minutes on one H200; must stay under 6):
``PYTHONPATH=src python3 benchmarks/gpu.py --out gpu_results.json``. It exits 1 if a check fails. Without CUDA it
checks its arguments, says so and exits 0, writing nothing. ``--smoke`` runs every section in a tiny form on the
CPU (the sync count degenerates there; the rest runs), which CI does so that an API change breaks a test here and
not the rare GPU run. Needs only torch, Lightning, TensorBoard and epochkit.
"""

from __future__ import annotations

# ruff: noqa: E402  (the heavy imports come after the dry-run check, so that a machine without CUDA pays only torch's)
import argparse
import contextlib
import datetime
import functools
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

SECTIONS = ("syncs", "overhead", "copies", "fingerprints", "correctness", "sharded", "init_audit")
NO_CUDA = (
    "benchmarks/gpu.py: CUDA is not available on this machine, so nothing was measured and nothing written "
    "(the arguments are valid). Run it where a GPU is, or with --smoke for the tiny CPU dry run."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: ``--out`` must be a file path in an existing directory; ``--sections`` names or
    numbers of sections (returned in run order)."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_results.json"), help="JSON results file")
    parser.add_argument("--smoke", action="store_true", help="every section in a tiny form, on the CPU too")
    parser.add_argument(
        "--sections",
        default="all",
        help=f"comma-separated names or numbers (1-{len(SECTIONS)}) of {', '.join(SECTIONS)}; or all",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} is a directory; give the path of a JSON file")
    if not args.out.resolve().parent.is_dir():
        parser.error(f"--out {str(args.out)!r}: the directory {str(args.out.resolve().parent)!r} does not exist")
    chosen: list[str] = []
    for item in (x.strip() for x in args.sections.split(",")):
        if item == "all":
            chosen.extend(SECTIONS)
        elif item.isdigit() and 1 <= int(item) <= len(SECTIONS):
            chosen.append(SECTIONS[int(item) - 1])
        elif item in SECTIONS:
            chosen.append(item)
        else:
            parser.error(f"--sections: {item!r} is not one of {', '.join(SECTIONS)}, 1-{len(SECTIONS)} or all")
    args.sections = [name for name in SECTIONS if name in chosen]
    return args


# Bad arguments fail before any heavy import.
_CLI = parse_args(sys.argv[1:]) if __name__ == "__main__" else None

# Section 5 trains with deterministic algorithms; cuBLAS reads this when it first starts, so set it before torch.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch

if _CLI is not None and not _CLI.smoke and not torch.cuda.is_available():
    print(NO_CUDA)
    sys.exit(0)

import lightning
import lightning.pytorch as pl
import lightning_utilities
import numpy as np
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler

import epochkit
from epochkit import EarlyStopping, InitAudit, InitAuditError, LRWarmup, ShuffleAudit
from epochkit._io import write_json_atomic
from epochkit.audit.callback import ShuffleAuditWarning
from epochkit.audit.recording import RecordingSampler, fingerprint
from epochkit.cv.reset import WeightReset, WeightResetError, weights_checksum
from epochkit.schedules import warmup_factor
from epochkit.stopping import HostWeights

SYNC_TEXT = "called a synchronizing CUDA operation"  # torch's warning text in set_sync_debug_mode("warn")
SCRIPTED_VAL = (5.0, 4.0, 1.0, 3.0, 2.0)  # section 6's val_loss per epoch: best at epoch 2, training goes on to 4
OVERHEAD_TARGET = 1.02
INIT_AUDIT_TARGET = 1.01  # issue 24: the whole check under 1% of the first epoch
CAPTURE_TARGET = 1.1
RESTORE_TARGET = 1.1  # issue 15's bar for WeightReset.restore; reported, not a check of this issue
WALL_TARGET_S = 360.0
CLASSES = 10


# ------------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Sizes:
    """How big each section's work is: the GPU run's sizes, or the tiny ones of ``--smoke``."""

    small_images: int  # sections 1, 5, 6: a small conv net on small images
    small_side: int
    small_channels: int
    small_depth: int
    small_batch: int
    sync_epochs: int
    sync_warmup: int
    big_images: int  # section 2: steps long enough to be GPU-bound
    big_side: int
    big_channels: int
    big_depth: int
    big_batch: int
    bench_epochs: int
    bench_repeats: int
    bench_warmup_round: bool
    copy_layers: int  # section 3: copy_layers x Linear(copy_width, copy_width)
    copy_width: int
    copy_repeats: int
    restore_repeats: int
    fp_batch: int  # section 4
    fp_side: int
    fp_repeats: int
    recorder_samples: int
    recorder_batch: int
    recorder_rounds: int
    check_epochs: int  # sections 5 and 6
    check_images: int
    check_batch: int
    check_warmup: int


GPU_SIZES = Sizes(
    small_images=512,
    small_side=32,
    small_channels=32,
    small_depth=2,
    small_batch=64,
    sync_epochs=3,
    sync_warmup=20,
    big_images=4096,
    big_side=64,
    big_channels=128,
    big_depth=4,
    big_batch=256,
    bench_epochs=2,
    bench_repeats=5,
    bench_warmup_round=True,
    copy_layers=60,  # 60 x (4096 x 4096 + 4096) = 1.007e9 parameters, 4.03 GB in float32
    copy_width=4096,
    copy_repeats=5,
    restore_repeats=10,
    fp_batch=1024,
    fp_side=64,
    fp_repeats=20,
    recorder_samples=1_000_000,
    recorder_batch=256,
    recorder_rounds=3,
    check_epochs=3,
    check_images=256,
    check_batch=64,
    check_warmup=6,
)

SMOKE_SIZES = Sizes(
    small_images=64,
    small_side=8,
    small_channels=4,
    small_depth=1,
    small_batch=16,
    sync_epochs=2,
    sync_warmup=6,
    big_images=64,
    big_side=8,
    big_channels=8,
    big_depth=1,
    big_batch=16,
    bench_epochs=1,
    bench_repeats=1,
    bench_warmup_round=False,
    copy_layers=3,
    copy_width=64,
    copy_repeats=2,
    restore_repeats=2,
    fp_batch=64,
    fp_side=8,
    fp_repeats=3,
    recorder_samples=20_000,
    recorder_batch=64,
    recorder_rounds=1,
    check_epochs=2,
    check_images=32,
    check_batch=8,
    check_warmup=6,
)


@dataclass
class Env:
    """What every section needs: the device, the sizes, where files go, the seed."""

    cuda: bool
    device: torch.device
    sizes: Sizes
    root: Path
    seed: int
    _dirs: int = 0

    @property
    def accelerator(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def precision(self) -> str:
        """bf16 autocast on the GPU; float32 on the CPU, where bf16 convolutions are slow to no purpose."""
        return "bf16-mixed" if self.cuda else "32-true"

    def fresh_dir(self, name: str) -> Path:
        self._dirs += 1
        path = self.root / f"{self._dirs:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- results
class Results:
    """Figures and checks by section, written to ``--out`` as JSON after every section (atomically)."""

    def __init__(self, out: Path, smoke: bool, env: Env) -> None:
        self.out = out
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "script": "benchmarks/gpu.py",
            "smoke": smoke,
            "cuda": env.cuda,
            "device": _device_name(env),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "lightning": lightning.__version__,
                "epochkit": epochkit.__version__,
            },
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sections": {},
            "checks": [],
            "passed": None,
            "wall_s": None,
        }

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"].setdefault(name, {"status": "running", "figures": {}, "wall_s": None})

    def figure(self, section: str, name: str, value: Any, unit: str = "") -> None:
        self.section(section)["figures"][name] = {"value": _plain(value), "unit": unit}

    def check(
        self, section: str, name: str, passed: bool, value: Any, target: str, applies: bool = True, note: str = ""
    ) -> None:
        """Record one check; one that does not apply here (the CPU dry run) is kept with status "n/a"."""
        status = ("pass" if passed else "fail") if applies else "n/a"
        self.data["checks"].append(
            {"section": section, "name": name, "status": status, "value": _plain(value), "target": target, "note": note}
        )

    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.data["checks"] if c["status"] == "fail"]

    def write(self) -> None:
        self.data["wall_s"] = round(time.perf_counter() - self.started, 2)
        self.data["passed"] = not self.failed()
        write_json_atomic(self.out, self.data)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy and torch scalars as Python numbers, tuples as lists, floats rounded to 6 significant."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.6g}")
    return value


def _device_name(env: Env) -> str:
    if env.cuda:
        props = torch.cuda.get_device_properties(env.device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ---------------------------------------------------------------------------------------- data and model
def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device`` without a host sync: pinned and non-blocking on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def as_batch(batch: Any) -> Any:
    """The collate function: the datasets below already return whole batches."""
    return batch


class DeviceImages(Dataset):
    """Synthetic images and one-hot labels held on the device; ``__getitems__`` gathers a whole batch there from the
    sampler's indices (uploaded without a sync), so no host round trip and no per-sample Python work."""

    def __init__(self, n: int, side: int, device: torch.device, seed: int) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.x = torch.randn(n, 3, side, side, generator=gen, device=device)
        labels = torch.randint(0, CLASSES, (n,), generator=gen, device=device)
        # One-hot by comparison, not F.one_hot: no scatter (deterministic mode) and no range check (host sync).
        self.y = (labels[:, None] == torch.arange(CLASSES, device=device)).float()
        self.targets = labels.cpu()  # ShuffleAudit reads class labels from here, once per fit

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = to_device(torch.as_tensor(indices, dtype=torch.long), self.device)
        return self.x[idx], self.y[idx]


class DeviceImageStream(IterableDataset):
    """The same images as an iterable data set (no sampler indices: ShuffleAudit falls back to content
    fingerprints), reshuffled on every pass."""

    def __init__(self, images: DeviceImages, batch: int, seed: int) -> None:
        self.images = images
        self.batch = batch
        self.seed = seed
        self.passes = 0

    def __len__(self) -> int:
        return len(self.images) // self.batch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        order = to_device(torch.randperm(len(self.images), generator=gen), self.images.device)
        for b in range(len(self)):
            idx = order[b * self.batch : (b + 1) * self.batch]
            yield self.images.x[idx], self.images.y[idx]


class Images(pl.LightningDataModule):
    """Train and validation images on the device; ``stream=True`` serves the train split as an iterable."""

    def __init__(self, n: int, side: int, batch: int, device: torch.device, seed: int, stream: bool) -> None:
        super().__init__()
        self.n, self.side, self.batch, self.device, self.seed, self.stream = n, side, batch, device, seed, stream

    def setup(self, stage: str) -> None:
        self.train = DeviceImages(self.n, self.side, self.device, self.seed)
        self.val = DeviceImages(2 * self.batch, self.side, self.device, self.seed + 1)

    def train_dataloader(self) -> DataLoader:
        if self.stream:
            return DataLoader(
                DeviceImageStream(self.train, self.batch, self.seed), batch_size=None, collate_fn=as_batch
            )
        return DataLoader(self.train, batch_size=self.batch, shuffle=True, drop_last=True, collate_fn=as_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch, collate_fn=as_batch)


class GlobalMean(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class ConvNet(pl.LightningModule):
    """A small conv net (no pooling or norm layers, so it has a deterministic CUDA backward).

    Three param groups: weights and biases share the optimizer's default LR (one tensor, for tensor LRs), the head
    has its own LR (its own tensor). ``optimizer``: ``"fused"`` (fused AdamW, tensor LR), ``"capturable"``
    (``capturable=True``, foreach, tensor LR), ``"single"`` (single-tensor AdamW, tensor LR: the CPU's stand-in for
    capturable) or ``"float"`` (foreach AdamW, float LR). ``record_lrs`` keeps the LR of every group at every applied
    step, read by a step post-hook that runs before LRWarmup's, i.e. while the warmup's scaling is still in place.
    ``shard`` applies FSDP2's ``fully_shard`` in ``configure_model`` (for ``ModelParallelStrategy``).
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        optimizer: str = "fused",
        lr: float = 1e-3,
        scripted_val: Sequence[float] | None = None,
        record_lrs: bool = False,
        shard: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        layers += [GlobalMean(), nn.Linear(channels, CLASSES)]
        self.net = nn.Sequential(*layers)
        self.optimizer_kind = optimizer
        self.lr = lr
        self.scripted_val = scripted_val
        self.record_lrs = record_lrs
        self.shard = shard
        self.used_lrs: list[list[Any]] = []
        self.base_lrs: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        # Soft-target cross entropy written out: CUDA's nll_loss has no deterministic mode.
        return -(F.log_softmax(self(x).float(), dim=1) * y).sum(dim=1).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        if self.scripted_val is not None:  # a fill kernel: no host-to-device copy
            loss = torch.full((), self.scripted_val[self.current_epoch], device=loss.device)
        self.log("val_loss", loss)

    def configure_model(self) -> None:
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        assert self.device_mesh is not None  # ModelParallelStrategy sets it before configure_model
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Conv2d | nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = self.net[-1]
        head_ids = {id(p) for p in head.parameters()}
        weights = [p for p in self.net.parameters() if id(p) not in head_ids and p.ndim > 1]
        biases = [p for p in self.net.parameters() if id(p) not in head_ids and p.ndim == 1]
        kind = self.optimizer_kind
        self.base_lrs = [self.lr, self.lr, self.lr / 10]
        if kind == "float":
            groups: list[dict[str, Any]] = [
                {"params": weights},
                {"params": biases, "weight_decay": 0.0},
                {"params": list(head.parameters()), "lr": self.lr / 10},
            ]
            opt = torch.optim.AdamW(groups, lr=self.lr)
        else:
            device = next(self.parameters()).device

            def tensor_lr(value: float) -> Tensor:  # a fill kernel on the device: no host-to-device copy
                return torch.full((), value, dtype=torch.float32, device=device)

            groups = [
                {"params": weights},  # weights and biases share the default LR tensor, as weight-decay groups do
                {"params": biases, "weight_decay": 0.0},
                {"params": list(head.parameters()), "lr": tensor_lr(self.lr / 10)},
            ]
            options: dict[str, Any] = {
                "fused": {"fused": True},
                "capturable": {"capturable": True, "foreach": True},
                "single": {"foreach": False},
            }[kind]
            opt = torch.optim.AdamW(groups, lr=tensor_lr(self.lr), **options)
        if self.record_lrs:
            # Registered here, before LRWarmup registers its hooks at fit start, so it runs first.
            opt.register_step_post_hook(self._record_lrs)
        return opt

    def _record_lrs(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.used_lrs.append(
            [g["lr"].detach().clone() if isinstance(g["lr"], Tensor) else g["lr"] for g in optimizer.param_groups]
        )


# --------------------------------------------------------------------------------------------- sync counter
_HOOK_CALLERS = frozenset(
    {"_call_callback_hooks", "_call_lightning_module_hook", "_call_strategy_hook", "_call_lightning_datamodule_hook"}
)
PER_BATCH = frozenset(
    {
        "<data loading>",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_validation_batch_start",
        "on_validation_batch_end",
        "on_before_batch_transfer",
        "transfer_batch_to_device",
        "batch_to_device",
        "on_after_batch_transfer",
        "training_step",
        "validation_step",
        "on_before_backward",
        "backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "optimizer_step",
        "on_before_zero_grad",
        "optimizer_zero_grad",
        "configure_gradient_clipping",
        "lr_scheduler_step",
    }
)


@dataclass(frozen=True)
class Frame:
    """One Python frame of a sync's stack, reduced to what attribution needs."""

    kind: str  # epochkit | lightning | script | torch | library (stdlib and other packages)
    where: str  # "package/relative/path.py:line function"


@dataclass(frozen=True)
class SyncEvent:
    """One host synchronisation: in which Lightning hook, and whose code asked for it.

    ``responsible`` is the innermost frame's owner once torch's own frames and libraries (stdlib, numpy, TensorBoard)
    are skipped: the code that called into torch. A sync inside a user's ``training_step`` run from within LRWarmup's
    closure wrapper is the user's, though its stack passes through epochkit (``through_epochkit``).
    """

    context: str
    per_batch: bool
    responsible: str
    site: str
    through_epochkit: bool


def _roots() -> list[tuple[str, str]]:
    roots = [
        ("epochkit", os.path.dirname(os.path.abspath(epochkit.__file__))),
        ("torch", os.path.dirname(os.path.abspath(torch.__file__))),
        ("lightning", os.path.dirname(os.path.abspath(lightning.__file__))),
        ("lightning", os.path.dirname(os.path.abspath(lightning_utilities.__file__))),
        ("script", os.path.abspath(__file__)),
    ]
    for standalone in ("lightning_fabric", "pytorch_lightning"):  # located, not imported (importing re-routes logs)
        spec = importlib.util.find_spec(standalone)
        if spec is not None and spec.origin:
            roots.append(("lightning", os.path.dirname(os.path.abspath(spec.origin))))
    # Longest prefix first, so site-packages inside the stdlib directory still resolve to their package.
    return sorted(roots, key=lambda kv: len(kv[1]), reverse=True)


_ROOTS = _roots()
_KIND_CACHE: dict[str, tuple[str, str]] = {}


def _kind(filename: str) -> tuple[str, str]:
    """(owner kind, short path) of a code file."""
    cached = _KIND_CACHE.get(filename)
    if cached is None:
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        cached = ("library", os.path.basename(filename))
        for kind, root in _ROOTS:
            if path == root or path.startswith(root + os.sep):
                base = os.path.dirname(root) if kind != "script" else os.path.dirname(os.path.dirname(root))
                cached = (kind, os.path.relpath(path, base))
                break
        _KIND_CACHE[filename] = cached
    return cached


def describe_stack(frame: FrameType | None, limit: int = 400) -> tuple[list[Frame], str | None]:
    """The frames from ``frame`` outward, and the innermost Lightning hook being called (its ``hook_name``)."""
    frames: list[Frame] = []
    hook: str | None = None
    while frame is not None and len(frames) < limit:
        code = frame.f_code
        kind, short = _kind(code.co_filename)
        if hook is None and kind == "lightning" and code.co_name in _HOOK_CALLERS:
            name = frame.f_locals.get("hook_name")
            hook = name if isinstance(name, str) else code.co_name
        if hook is None and kind in ("lightning", "torch") and code.co_name == "__next__":
            hook = "<data loading>"  # the loop fetching the next batch: Lightning's fetcher, the DataLoader
        frames.append(Frame(kind, f"{short}:{frame.f_lineno} {code.co_name}"))
        frame = frame.f_back
    return frames, hook


def classify(frames: Sequence[Frame], hook: str | None) -> SyncEvent:
    """Attribute one sync (pure: tested on synthetic stacks by ``--smoke``)."""
    owner = next((f for f in frames if f.kind in ("epochkit", "lightning", "script")), None)
    if hook is None:
        inner_lightning = next((f for f in frames if f.kind == "lightning"), None)
        hook = "<outside fit>" if inner_lightning is None else f"<{inner_lightning.where.rsplit(' ', 1)[-1]}>"
    return SyncEvent(
        context=hook,
        per_batch=hook in PER_BATCH,
        responsible="unknown" if owner is None else owner.kind,
        site="" if owner is None else owner.where,
        through_epochkit=any(f.kind == "epochkit" for f in frames),
    )


class SyncCounter:
    """Counts CUDA host syncs while active: ``set_sync_debug_mode("warn")`` makes torch issue a UserWarning at each
    one (from C++, emitted while the Python frame that called into torch is live), and ``showwarning`` walks the
    stack from there. On the CPU nothing syncs; ``--smoke`` feeds it the same warning from known places instead."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.events: list[SyncEvent] = []
        self.other: list[type[Warning]] = []  # the categories of the other warnings seen (passed on as usual)
        self._catch: Any = None
        self._previous: Any = None

    def __enter__(self) -> SyncCounter:
        # Nothing inside may enter catch_warnings(record=True): it puts the default showwarning back.
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=SYNC_TEXT)  # every sync, not once per call site
        warnings.simplefilter("always", ShuffleAuditWarning)
        self._previous = warnings.showwarning
        warnings.showwarning = self._show
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    def _show(
        self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if SYNC_TEXT in str(message):
            frames, hook = describe_stack(sys._getframe(1))
            self.events.append(classify(frames, hook))
        else:
            self.other.append(category)
            self._previous(message, category, filename, lineno, file, line)


def sync_summary(events: Sequence[SyncEvent]) -> dict[str, Any]:
    sites = Counter((e.context, e.responsible, e.site) for e in events)
    return {
        "total": len(events),
        "per_batch": sum(e.per_batch for e in events),
        "per_batch_epochkit": sum(e.per_batch and e.responsible == "epochkit" for e in events),
        "per_batch_through_epochkit_not_ours": sum(
            e.per_batch and e.through_epochkit and e.responsible != "epochkit" for e in events
        ),
        "epochkit_per_epoch": [
            {"context": c, "site": s, "count": n}
            for (c, r, s), n in sorted(sites.items())
            if r == "epochkit" and c not in PER_BATCH
        ],
        "by_site": [{"context": c, "responsible": r, "site": s, "count": n} for (c, r, s), n in sorted(sites.items())],
    }


def classify_self_test() -> list[str]:
    """Attribution on synthetic stacks (innermost frame first); returns what went wrong (empty: all right)."""
    torch_f = Frame("torch", "torch/_tensor.py:1 item")
    lib_f = Frame("library", "warnings.py:1 _showwarnmsg")
    cases = [
        # (frames, hook, expected (context, per_batch, responsible, through_epochkit))
        (
            [lib_f, Frame("epochkit", "epochkit/warmup/callback.py:9 on_train_batch_end"), Frame("lightning", "x")],
            "on_train_batch_end",
            ("on_train_batch_end", True, "epochkit", True),
        ),
        (
            [
                lib_f,
                torch_f,
                Frame("script", "benchmarks/gpu.py:1 training_step"),
                Frame("lightning", "l"),
                Frame("epochkit", "epochkit/warmup/callback.py:9 _scaled_closure"),
                Frame("lightning", "m"),
            ],
            "training_step",
            ("training_step", True, "script", True),
        ),
        (
            [lib_f, torch_f, Frame("epochkit", "epochkit/audit/callback.py:5 _local_payload")],
            "on_train_epoch_end",
            ("on_train_epoch_end", False, "epochkit", True),
        ),
        (
            [lib_f, torch_f, Frame("lightning", "lightning/pytorch/loops/fetchers.py:3 __next__")],
            None,
            ("<__next__>", False, "lightning", False),
        ),
        ([lib_f, torch_f], None, ("<outside fit>", False, "unknown", False)),
    ]
    problems = []
    for frames, hook, expected in cases:
        e = classify(frames, hook)
        got = (e.context, e.per_batch, e.responsible, e.through_epochkit)
        if got != expected:
            problems.append(f"{[f.where for f in frames]}: got {got}, expected {expected}")
    return problems


class SyncProbe(Callback):
    """Positive control for the counter: at batch 0 of every epoch, one sync from this script in a per-batch hook,
    and (on CUDA) syncs inside epochkit code called from it (``weights_checksum`` copies each tensor to the host).
    On the CPU, which has no syncs to catch, the same warning is issued from here instead."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx != 0:
            return
        if self.cuda:
            float(outputs["loss"])
            weights_checksum(pl_module)
        else:
            warnings.warn(SYNC_TEXT, UserWarning, stacklevel=1)


# ------------------------------------------------------------------------------------------------ trainers
def part(res: Results, section: str, name: str, run: Callable[[], None]) -> None:
    """Run one independent part of a section: an exception fails that part (a check with the error) and the rest
    still runs, since a GPU run is too rare to lose the other figures to one failure."""
    try:
        run()
    except Exception as err:
        res.check(section, f"{name}: ran to the end", False, f"{type(err).__name__}: {err}"[:300], "no exception")
        res.section(section).setdefault("errors", []).append("".join(traceback.format_exception(err))[-3000:])
        traceback.print_exc()


def make_trainer(env: Env, name: str, callbacks: Sequence[Callback], max_epochs: int, **kwargs: Any) -> pl.Trainer:
    root = env.fresh_dir(name)
    options: dict[str, Any] = {
        "accelerator": env.accelerator,
        "devices": 1,
        "precision": env.precision,
        "max_epochs": max_epochs,
        "logger": TensorBoardLogger(root, name="", version=""),
        "log_every_n_steps": 2,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
        "callbacks": list(callbacks),
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def all_callbacks(warmup: int, audit: ShuffleAudit | None = None) -> list[Callback]:
    """ShuffleAudit, LRWarmup and EarlyStopping(restore_best_weights=True) with a per-epoch check."""
    return [
        audit or ShuffleAudit(on_issue="warn"),
        LRWarmup(steps=warmup),
        EarlyStopping("val_loss", patience=1000, restore_best_weights=True),
    ]


def small_net(env: Env, **kwargs: Any) -> ConvNet:
    s = env.sizes
    return ConvNet(s.small_channels, s.small_depth, **kwargs)


def small_data(env: Env, stream: bool, n: int | None = None, batch: int | None = None) -> Images:
    s = env.sizes
    return Images(n or s.small_images, s.small_side, batch or s.small_batch, env.device, env.seed, stream)


# ---------------------------------------------------------------------------------------------- 1. syncs
def section_syncs(env: Env, res: Results) -> None:
    problems = classify_self_test()
    res.check("syncs", "attribution self-test (synthetic stacks)", not problems, problems or "ok", "all cases right")

    # Positive control: the counter must see the probe's syncs, in the right hook, owned by the right code.
    pl.seed_everything(env.seed, verbose=False)
    with SyncCounter(env.cuda) as counter:
        trainer = make_trainer(env, "sync-control", [SyncProbe(env.cuda)], max_epochs=2)
        trainer.fit(small_net(env), datamodule=small_data(env, stream=False))
    control = sync_summary(counter.events)
    res.figure("syncs", "control: details", control)
    probe = [
        e for e in counter.events if e.site.startswith("benchmarks/gpu.py") and e.site.endswith("on_train_batch_end")
    ]
    res.check(
        "syncs",
        "control: the probe's sync seen once per epoch, in on_train_batch_end",
        len(probe) == 2 and all(e.per_batch and e.context == "on_train_batch_end" for e in probe),
        len(probe),
        "2",
    )
    ours = [e for e in counter.events if e.responsible == "epochkit" and e.context == "on_train_batch_end"]
    res.check(
        "syncs",
        "control: syncs inside epochkit code called in a per-batch hook are attributed to epochkit",
        len(ours) > 0,
        len(ours),
        "> 0",
        applies=env.cuda,
        note="" if env.cuda else "CPU: nothing syncs inside epochkit",
    )

    variants = ["fused", "capturable"] if env.cuda else ["fused"]
    for optimizer in variants:
        for mode in ("indices", "fingerprints"):
            part(res, "syncs", f"{optimizer}/{mode}", functools.partial(sync_variant, env, res, optimizer, mode))


def sync_variant(env: Env, res: Results, optimizer: str, mode: str) -> None:
    """Syncs with and without the callbacks, for one optimizer and one kind of data."""
    s = env.sizes
    runs = {}
    for arm in ("none", "all"):
        pl.seed_everything(env.seed, verbose=False)
        callbacks: list[Callback] = [] if arm == "none" else all_callbacks(s.sync_warmup)
        if not env.cuda:  # the CPU has no syncs: prove the counter is live in these very runs instead
            callbacks.append(SyncProbe(cuda=False))
        with SyncCounter(env.cuda) as counter:
            trainer = make_trainer(env, f"sync-{optimizer}-{mode}-{arm}", callbacks, max_epochs=s.sync_epochs)
            trainer.fit(small_net(env, optimizer=optimizer), datamodule=small_data(env, mode == "fingerprints"))
        runs[arm] = sync_summary(counter.events)
        runs[arm]["steps"] = trainer.global_step
        runs[arm]["audit_warnings"] = sum(issubclass(c, ShuffleAuditWarning) for c in counter.other)
    key = f"{optimizer}/{mode}"
    res.figure("syncs", f"{key}: details", runs)
    if not env.cuda:
        seen = [runs[arm]["per_batch"] for arm in ("none", "all")]
        res.check(
            "syncs",
            f"{key}: the counter saw the CPU probe in both runs",
            seen == [s.sync_epochs] * 2,
            seen,
            f"[{s.sync_epochs}, {s.sync_epochs}]",
        )
    res.figure(
        "syncs",
        f"{key}: per-batch syncs, none / all callbacks",
        [runs["none"]["per_batch"], runs["all"]["per_batch"]],
    )
    res.figure(
        "syncs",
        f"{key}: epochkit's per-epoch syncs (hook, site: count over {s.sync_epochs} epochs)",
        [f"{e['context']}, {e['site']}: {e['count']}" for e in runs["all"]["epochkit_per_epoch"]],
    )
    res.check(
        "syncs",
        f"{key}: syncs epochkit caused in per-batch hooks",
        runs["all"]["per_batch_epochkit"] == 0,
        runs["all"]["per_batch_epochkit"],
        "0",
        applies=env.cuda,
        note=f"{runs['all']['steps']} steps",
    )
    res.check(
        "syncs",
        f"{key}: per-batch syncs with all callbacks - without (whoever's code)",
        runs["all"]["per_batch"] == runs["none"]["per_batch"],
        runs["all"]["per_batch"] - runs["none"]["per_batch"],
        "0",
        applies=env.cuda,
    )
    res.check(
        "syncs",
        f"{key}: ShuffleAudit quiet",
        runs["all"]["audit_warnings"] == 0,
        runs["all"]["audit_warnings"],
        "0",
    )


# ------------------------------------------------------------------------------------------- 2. overhead
class StepTimer(Callback):
    """Time between consecutive batch starts within an epoch, on the device's own clock (CUDA events recorded on
    the stream, so it measures the GPU timeline: with GPU-bound steps that is the step time)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.epochs: list[list[Any]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.epochs[-1].append(event)
        else:
            self.epochs[-1].append(time.perf_counter())

    def step_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for marks in self.epochs for a, b in itertools.pairwise(marks)]
        return [(b - a) * 1e3 for marks in self.epochs for a, b in itertools.pairwise(marks)]


def timed_hook(callback: Callback, hook: str, sink: list[float]) -> None:
    """Time every call of ``callback.<hook>`` (host seconds) into ``sink``; Lightning looks hooks up by name."""
    inner = getattr(callback, hook)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(callback, hook, timed)


def section_overhead(env: Env, res: Results) -> None:
    s = env.sizes
    hook_s: dict[str, list[float]] = {"indices": [], "fingerprints": []}

    def arm(mode: str, with_callbacks: bool) -> Callable[[], float]:
        def run() -> float:
            pl.seed_everything(env.seed, verbose=False)
            timer = StepTimer(env.cuda)
            callbacks: list[Callback] = [timer]
            if with_callbacks:
                audit = ShuffleAudit(on_issue="log")
                timed_hook(audit, "on_train_batch_start", hook_s[mode])
                callbacks += all_callbacks(warmup=100_000, audit=audit)  # the warmup lasts the whole run
            trainer = make_trainer(
                env,
                f"overhead-{mode}-{int(with_callbacks)}",
                callbacks,
                max_epochs=s.bench_epochs,
                log_every_n_steps=10,
            )
            module = ConvNet(s.big_channels, s.big_depth, optimizer="fused")
            data = Images(s.big_images, s.big_side, s.big_batch, env.device, env.seed, stream=mode == "fingerprints")
            trainer.fit(module, datamodule=data)
            arms_ms[(mode, with_callbacks)].append(timer.step_ms())
            return statistics.median(arms_ms[(mode, with_callbacks)][-1])

        return run

    arms_ms: dict[tuple[str, bool], list[list[float]]] = {}
    runs: dict[str, Callable[[], float]] = {}
    for mode in ("indices", "fingerprints"):
        for with_callbacks in (False, True):
            arms_ms[(mode, with_callbacks)] = []
            runs[f"{mode}/{'all' if with_callbacks else 'none'}"] = arm(mode, with_callbacks)
    if s.bench_warmup_round:
        for run in runs.values():  # CUDA, cuDNN and allocator warm-up; discarded
            run()
        for key in arms_ms:
            arms_ms[key].clear()
        for sink in hook_s.values():
            sink.clear()
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(s.bench_repeats):
        for name, run in runs.items():
            medians[name].append(run())
    for mode in ("indices", "fingerprints"):
        none, full = medians[f"{mode}/none"], medians[f"{mode}/all"]
        ratio = statistics.median(full) / statistics.median(none)
        pair_ratios = [a / b for a, b in zip(full, none, strict=True)]
        res.figure("overhead", f"{mode}: median step, none", statistics.median(none), "ms")
        res.figure("overhead", f"{mode}: median step, all callbacks", statistics.median(full), "ms")
        res.figure("overhead", f"{mode}: per-repeat ratios", pair_ratios)
        res.figure("overhead", f"{mode}: steps timed per arm", sum(len(x) for x in arms_ms[(mode, True)]))
        res.check(
            "overhead",
            f"{mode}: median step time all callbacks / none",
            ratio <= OVERHEAD_TARGET,
            ratio,
            f"<= {OVERHEAD_TARGET}",
            applies=env.cuda,
            note="" if env.cuda else "CPU dry run: not GPU-bound",
        )
        if hook_s[mode]:
            res.figure(
                "overhead",
                f"{mode}: ShuffleAudit.on_train_batch_start host time",
                1e6 * statistics.median(hook_s[mode]),
                "us/batch",
            )
    res.figure("overhead", "ShuffleAudit sampler recorder host time", recorder_cost_us(env), "us/batch")


def recorder_cost_us(env: Env) -> float:
    """Extra host time per batch of iterating a batch sampler through ShuffleAudit's recorder (interleaved)."""
    s = env.sizes
    gen = torch.Generator().manual_seed(env.seed)
    plain = BatchSampler(RandomSampler(range(s.recorder_samples), generator=gen), s.recorder_batch, drop_last=False)
    recorded = RecordingSampler(
        BatchSampler(RandomSampler(range(s.recorder_samples), generator=gen), s.recorder_batch, drop_last=False),
        batched=True,
    )

    def per_batch(sampler: Any) -> float:
        start = time.perf_counter()
        count = sum(1 for _ in sampler)
        return (time.perf_counter() - start) / count

    diffs = []
    for _ in range(s.recorder_rounds):
        diffs.append(per_batch(recorded) - per_batch(plain))
    return 1e6 * statistics.median(diffs)


# --------------------------------------------------------------------------------------------- 3. copies
def wall(env: Env, fn: Callable[[], Any]) -> float:
    env.sync()
    start = time.perf_counter()
    fn()
    env.sync()
    return time.perf_counter() - start


def section_copies(env: Env, res: Results) -> None:
    s = env.sizes
    torch.manual_seed(env.seed)
    with torch.device(env.device):
        model = nn.Sequential(*[nn.Linear(s.copy_width, s.copy_width) for _ in range(s.copy_layers)])
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    res.figure("copies", "model parameters", params)
    res.figure("copies", "model bytes", nbytes, "B")
    flat_device = torch.empty(nbytes // 4, dtype=torch.float32, device=env.device)
    # Each frees its buffers when it returns (pinned ones go back to torch's host cache).
    part(res, "copies", "best-weight copy", lambda: bench_best_weights(env, res, model, flat_device))
    part(res, "copies", "WeightReset", lambda: bench_weight_reset(env, res, model, flat_device))
    if env.cuda:
        torch.cuda.empty_cache()


def bench_best_weights(env: Env, res: Results, model: nn.Module, flat_device: Tensor) -> None:
    """EarlyStopping's best-weight copy (HostWeights) against one plain copy_ of the same bytes into pinned memory."""
    s = env.sizes
    gb = flat_device.numel() * 4 / 1e9
    copy = HostWeights()
    first = wall(env, lambda: copy.capture(model))
    env.sync()
    start = time.perf_counter()
    host = torch.empty(flat_device.numel(), dtype=torch.float32, pin_memory=env.cuda)
    plain_alloc = time.perf_counter() - start
    captures, plains = [], []
    for _ in range(s.copy_repeats):
        captures.append(wall(env, lambda: copy.capture(model)))
        plains.append(wall(env, lambda: host.copy_(flat_device)))
    capture, plain = statistics.median(captures), statistics.median(plains)
    pinned = all(b.is_pinned() for b in copy.state().values()) if env.cuda else None
    res.figure("copies", "best-weight capture (HostWeights.capture)", capture, "s")
    res.figure("copies", "plain copy_ into a pinned buffer", plain, "s")
    res.figure("copies", "capture GB/s", gb / capture, "GB/s")
    res.figure("copies", "plain copy GB/s", gb / plain, "GB/s")
    res.figure("copies", "first capture (allocates the pinned buffers)", first, "s")
    res.figure("copies", "first capture's allocation time (first - median capture)", first - capture, "s")
    res.figure("copies", "plain pinned allocation of the same bytes", plain_alloc, "s")
    res.check(
        "copies",
        "best-weight capture / plain copy into pinned memory",
        capture / plain <= CAPTURE_TARGET,
        capture / plain,
        f"<= {CAPTURE_TARGET}",
        applies=env.cuda,
        note=f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters",
    )
    res.check("copies", "HostWeights host buffers are pinned", bool(pinned), pinned, "True", applies=env.cuda)
    load = statistics.median(wall(env, lambda: copy.load_into(model)) for _ in range(2))
    res.figure("copies", "best-weight load back into the model (load_into)", load, "s")
    res.figure("copies", "load_into GB/s", gb / load, "GB/s")


def bench_weight_reset(env: Env, res: Results, model: nn.Module, flat_device: Tensor) -> None:
    """WeightReset.restore (snapshot kept on the device) against one plain device copy of the same bytes."""
    s = env.sizes
    reset = WeightReset()
    snapshot_s = wall(env, lambda: reset.snapshot(model))
    flat_device2 = torch.empty_like(flat_device)
    restores, device_copies = [], []
    for _ in range(s.restore_repeats):
        restores.append(wall(env, lambda: reset.restore(model)))
        device_copies.append(wall(env, lambda: flat_device2.copy_(flat_device)))
    restore, device_copy = statistics.median(restores), statistics.median(device_copies)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    try:
        reset.verify(model)
        caught = False
    except WeightResetError:
        caught = True
    reset.restore(model)
    verify_s = wall(env, lambda: reset.verify(model))
    res.figure("copies", "WeightReset.snapshot (copy on the device + checksum)", snapshot_s, "s")
    res.figure("copies", "WeightReset.restore", restore, "s")
    res.figure("copies", "plain device copy", device_copy, "s")
    res.figure("copies", "WeightReset.restore / plain device copy", restore / device_copy)
    res.figure("copies", "WeightReset.restore target (issue 15, reported only)", f"<= {RESTORE_TARGET}")
    res.figure("copies", "WeightReset.verify (checksum)", verify_s, "s")
    res.check("copies", "WeightReset: verify catches a changed weight, restore undoes it", caught, caught, "True")


# ---------------------------------------------------------------------------------------- 4. fingerprints
def device_seconds(env: Env, fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn`` on the device's clock (CUDA events) or the host's."""
    times = []
    for _ in range(repeats):
        if env.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(env: Env, numel: int, repeats: int) -> float:
    """The device's copy bandwidth in GB/s (bytes copied per second), on ``numel`` float32 (512 MiB on the GPU)."""
    src = torch.empty(numel, dtype=torch.float32, device=env.device)
    dst = torch.empty_like(src)
    return numel * 4 / 1e9 / device_seconds(env, lambda: dst.copy_(src), repeats)


def section_fingerprints(env: Env, res: Results) -> None:
    s = env.sizes
    gen = torch.Generator(device=env.device).manual_seed(env.seed)
    images = torch.randn(s.fp_batch, 3, s.fp_side, s.fp_side, generator=gen, device=env.device)
    labels = torch.randint(0, CLASSES, (s.fp_batch,), generator=gen, device=env.device)
    batches = {
        "float32 images + int64 labels": (images, labels),
        "bfloat16 images + int64 labels": (images.bfloat16(), labels),
        "uint8 images + int64 labels": ((images * 40 + 128).clamp(0, 255).to(torch.uint8), labels),
    }
    copy_gbps = copy_bandwidth(env, max(images.numel(), 2**27 if env.cuda else 0), s.fp_repeats)
    res.figure("fingerprints", "device copy GB/s (bytes copied / s)", copy_gbps, "GB/s")
    same = True
    for name, batch in batches.items():
        fingerprint(batch)  # first call builds the multiplier table for this width
        seconds = device_seconds(env, functools.partial(fingerprint, batch), s.fp_repeats)
        nbytes = sum(t.numel() * t.element_size() for t in batch)
        res.figure("fingerprints", f"{name}: GB/s", nbytes / 1e9 / seconds, "GB/s")
        res.figure("fingerprints", f"{name}: fraction of copy bandwidth", nbytes / 1e9 / seconds / copy_gbps)
        res.figure("fingerprints", f"{name}: us per batch of {s.fp_batch}", 1e6 * seconds, "us")
        on_host = fingerprint(tuple(t.cpu() for t in batch))
        same = same and torch.equal(fingerprint(batch).cpu(), on_host)
    res.check("fingerprints", "on-device fingerprints equal the CPU's, for every dtype", same, same, "True")


# ------------------------------------------------------------------------------------------ 5. correctness
@contextlib.contextmanager
def restored_torch_flags() -> Iterator[None]:
    """Lightning's deterministic=True sets global torch flags; put them back for the sections after."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def expected_lrs(base: Sequence[float], steps: int, warmup: int, tensor: bool) -> list[list[float]]:
    """The LR of every group at every step by the CPU formula: base * w(k) with w(k) = (k + 1) / W (linear), 1 after;
    for tensor LRs in float32, as ``mul_`` on a float32 CPU tensor computes it."""
    factors = np.asarray(warmup_factor(np.arange(warmup), warmup, "linear", 0.0)).tolist()
    out = []
    for k in range(steps):
        w = factors[k] if k < warmup else 1.0
        if tensor:
            out.append([float(torch.tensor(b, dtype=torch.float32).mul_(w)) for b in base])
        else:
            out.append([b * w for b in base])
    return out


def used_lrs_on_host(module: ConvNet) -> list[list[float]]:
    """The recorded LRs, moved to the host in one transfer (after the fit)."""
    if not module.used_lrs:
        return []
    if isinstance(module.used_lrs[0][0], Tensor):
        flat = torch.stack([lr for step in module.used_lrs for lr in step]).cpu().tolist()
        width = len(module.used_lrs[0])
        return [flat[i : i + width] for i in range(0, len(flat), width)]
    return [[float(lr) for lr in step] for step in module.used_lrs]


def section_correctness(env: Env, res: Results) -> None:
    for optimizer in ["fused", "capturable"] if env.cuda else ["fused", "single"]:
        part(res, "correctness", f"{optimizer} LRs", functools.partial(warmup_lrs_exact, env, res, optimizer))
    with restored_torch_flags():
        for mode in ("indices", "fingerprints"):
            part(res, "correctness", f"{mode} bit-identity", functools.partial(audit_bit_identical, env, res, mode))


def warmup_lrs_exact(env: Env, res: Results, optimizer: str) -> None:
    """The LR every step used, with tensor LRs scaled in place on the device, against the CPU formula."""
    s = env.sizes
    pl.seed_everything(env.seed, verbose=False)
    module = small_net(env, optimizer=optimizer, record_lrs=True)
    trainer = make_trainer(env, f"lr-{optimizer}", [LRWarmup(steps=s.check_warmup)], max_epochs=s.check_epochs)
    trainer.fit(module, datamodule=small_data(env, False, n=s.check_images, batch=s.check_batch))
    used = used_lrs_on_host(module)
    expected = expected_lrs(module.base_lrs, trainer.global_step, s.check_warmup, tensor=True)
    wrong = [k for k, (u, e) in enumerate(zip(used, expected, strict=False)) if u != e]
    worst = max(
        (abs(a / b - 1) for u, e in zip(used, expected, strict=False) for a, b in zip(u, e, strict=True)), default=0
    )
    res.figure("correctness", f"{optimizer}: LRs used at steps 0-2", used[:3])
    res.figure("correctness", f"{optimizer}: CPU formula at steps 0-2", expected[:3])
    res.check(
        "correctness",
        f"{optimizer} AdamW, tensor LRs: LR used == CPU formula, every step and group",
        len(used) == trainer.global_step > s.check_warmup and not wrong,
        {"steps": len(used), "steps_differing": wrong, "max_rel_diff": worst},
        "exactly equal",
    )
    finals = [float(g["lr"]) for g in trainer.optimizers[0].param_groups]
    bases = [float(torch.tensor(b, dtype=torch.float32)) for b in module.base_lrs]
    res.check(
        "correctness",
        f"{optimizer}: LR tensors restored to the base LRs after warmup",
        finals == bases,
        finals,
        str(bases),
    )


def audit_bit_identical(env: Env, res: Results, mode: str) -> None:
    """Final weights with and without ShuffleAudit under deterministic algorithms (and, as a control, twice without)."""
    s = env.sizes
    weights: dict[str, dict[str, Tensor]] = {}
    audits: list[ShuffleAudit] = []
    arms = ["without", "with"] + (["without again"] if mode == "indices" else [])
    for arm in arms:
        pl.seed_everything(env.seed, verbose=False)
        callbacks: list[Callback] = [LRWarmup(steps=s.check_warmup)]
        if arm == "with":
            audits.append(ShuffleAudit(on_issue="warn"))
            callbacks.append(audits[-1])
        module = small_net(env, optimizer="fused")
        trainer = make_trainer(env, f"bits-{mode}-{arm}", callbacks, max_epochs=s.check_epochs, deterministic=True)
        trainer.fit(module, datamodule=small_data(env, mode == "fingerprints", n=s.check_images, batch=s.check_batch))
        weights[arm] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    differ = [k for k in weights["without"] if not torch.equal(weights["without"][k], weights["with"][k])]
    audited = len(audits[0].verdicts_) == s.check_epochs
    if "without again" in weights:
        control = [k for k in weights["without"] if not torch.equal(weights["without"][k], weights["without again"][k])]
        res.check("correctness", "control: two runs without the audit are bit-identical", not control, control, "[]")
    res.check(
        "correctness",
        f"{mode}: final weights bit-identical with and without ShuffleAudit (deterministic)",
        not differ and audited,
        {"tensors_differing": differ, "epochs_audited": len(audits[0].verdicts_)},
        "no tensor differs",
    )


# ---------------------------------------------------------------------------------------------- 6. sharded
class FullStates(Callback):
    """The full (gathered) state dict at the end of every training epoch, copied to the host: what EarlyStopping's
    restore is compared with."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, Tensor]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states[trainer.current_epoch] = full_state(trainer)


def full_state(trainer: pl.Trainer) -> dict[str, Tensor]:
    """The whole model's state dict, gathered, as host copies (FSDP: Lightning's full state dict; DTensors: DCP's)."""
    state: dict[str, Any]
    if isinstance(trainer.strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = trainer.strategy.model
        assert model is not None
        state = dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))
    else:
        state = trainer.strategy.lightning_module_state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@contextlib.contextmanager
def process_group_port() -> Iterator[None]:
    """A free port for the one-process group the strategy starts; the group destroyed afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sharded_fit(
    env: Env, name: str, strategy: Any, restore: bool | str, shard: bool
) -> tuple[pl.Trainer, ConvNet, EarlyStopping, ShuffleAudit, FullStates, list[warnings.WarningMessage]]:
    s = env.sizes
    pl.seed_everything(env.seed, verbose=False)
    stop = EarlyStopping("val_loss", patience=100, restore_best_weights=restore)  # type: ignore[arg-type]
    audit, states = ShuffleAudit(on_issue="warn"), FullStates()
    callbacks: list[Callback] = [stop, LRWarmup(steps=s.check_warmup), audit, states]
    extra: dict[str, Any] = {}
    if restore == "checkpoint":
        callbacks.append(ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1))
        extra["enable_checkpointing"] = True
    module = small_net(env, optimizer="float", record_lrs=True, scripted_val=SCRIPTED_VAL, shard=shard)
    trainer = make_trainer(
        env,
        name,
        callbacks,
        max_epochs=len(SCRIPTED_VAL),
        strategy=strategy,
        **extra,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShuffleAuditWarning)
        trainer.fit(module, datamodule=small_data(env, False, n=s.check_images, batch=s.check_batch))
    return trainer, module, stop, audit, states, [w for w in caught if issubclass(w.category, ShuffleAuditWarning)]


def check_sharded_fit(env: Env, res: Results, label: str, fitted: tuple[Any, ...]) -> None:
    trainer, module, stop, audit, states, audit_warnings = fitted
    s = env.sizes
    best, last = 2, len(SCRIPTED_VAL) - 1
    final = full_state(trainer)
    restored = all(torch.equal(final[k], states.states[best][k]) for k in final)
    moved = not all(torch.equal(final[k], states.states[last][k]) for k in final)
    res.check(
        "sharded",
        f"{label}: EarlyStopping restored the best epoch's weights (== full state dict saved at epoch {best})",
        restored and moved and stop.best_epoch == best and stop.restored_epoch == best,
        {
            "equal_to_best": restored,
            "differs_from_last": moved,
            "best": stop.best_epoch,
            "restored": stop.restored_epoch,
        },
        f"best = restored = {best}",
    )
    used = used_lrs_on_host(module)
    expected = expected_lrs(module.base_lrs, trainer.global_step, s.check_warmup, tensor=False)
    res.check(
        "sharded",
        f"{label}: LRWarmup scaled every param group (LR used == base * w(k), each step)",
        used == expected and len(used) > s.check_warmup,
        {"steps": len(used), "groups": len(used[0]) if used else 0},
        "exactly equal",
    )
    issues = [f.code for v in audit.verdicts_ for f in v.issues]
    res.check(
        "sharded",
        f"{label}: ShuffleAudit ran quiet",
        not audit_warnings and not issues and len(audit.verdicts_) == len(SCRIPTED_VAL),
        {"warnings": len(audit_warnings), "issues": issues, "epochs_audited": len(audit.verdicts_)},
        "no issue, every epoch audited",
    )


def weight_reset_round_trip(module: nn.Module) -> dict[str, Any]:
    reset = WeightReset()
    checksum = reset.snapshot(module)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    try:
        reset.verify(module)
        noticed = False
    except WeightResetError:
        noticed = True
    reset.restore(module)
    return {"noticed_change": noticed, "round_trip": reset.verify(module) == checksum}


def expect_setup_refusal(env: Env, res: Results, label: str, strategy: Any, needle: str, shard: bool) -> None:
    pl.seed_everything(env.seed, verbose=False)
    trainer = make_trainer(
        env,
        f"refuse-{label}",
        [EarlyStopping("val_loss", restore_best_weights=True)],
        max_epochs=1,
        strategy=strategy,
    )
    message = ""
    try:
        trainer.fit(small_net(env, optimizer="float", shard=shard), datamodule=small_data(env, False))
    except MisconfigurationException as err:
        message = str(err)
    res.check(
        "sharded",
        f"{label}: restore_best_weights=True refused at setup, pointing to 'checkpoint'",
        needle in message and "restore_best_weights='checkpoint'" in message and trainer.global_step == 0,
        message[:300] or "no error",
        f"MisconfigurationException naming {needle!r}",
    )


def fsdp_restore(env: Env, res: Results) -> None:
    with process_group_port():
        fitted = sharded_fit(env, "fsdp", FSDPStrategy(), restore=True, shard=False)
        check_sharded_fit(env, res, "FSDPStrategy", fitted)
        outcome = weight_reset_round_trip(fitted[0].lightning_module)
        res.check(
            "sharded",
            "FSDPStrategy: WeightReset snapshot/restore/verify round-trips",
            outcome["noticed_change"] and outcome["round_trip"],
            outcome,
            "both True",
        )


def fsdp_wrapped_restore(env: Env, res: Results) -> None:
    with process_group_port():
        strategy = FSDPStrategy(auto_wrap_policy={nn.Conv2d, nn.Linear})
        fitted = sharded_fit(env, "fsdp-wrap", strategy, restore=True, shard=False)
        check_sharded_fit(env, res, "FSDPStrategy(auto_wrap_policy)", fitted)


def fsdp_flat_refused(env: Env, res: Results) -> None:
    with process_group_port():
        strategy = FSDPStrategy(use_orig_params=False)
        expect_setup_refusal(env, res, "FSDPStrategy(use_orig_params=False)", strategy, "use_orig_params=False", False)


def model_parallel_refused(env: Env, res: Results) -> None:
    with process_group_port():
        expect_setup_refusal(env, res, "ModelParallelStrategy", ModelParallelStrategy(), "DTensors", shard=True)


def model_parallel_checkpoint_restore(env: Env, res: Results) -> None:
    with process_group_port():
        fitted = sharded_fit(env, "model-parallel", ModelParallelStrategy(), restore="checkpoint", shard=True)
        check_sharded_fit(env, res, "ModelParallelStrategy + fully_shard, restore='checkpoint'", fitted)
        message = ""
        try:
            WeightReset().snapshot(fitted[1])
        except WeightResetError as err:
            message = str(err)
        res.check(
            "sharded",
            "ModelParallelStrategy: WeightReset refuses DTensor parameters with a clear error",
            "sharded (DTensor)" in message,
            message[:200] or "no error",
            "WeightResetError naming the DTensors",
        )


def section_sharded(env: Env, res: Results) -> None:
    if env.cuda:
        part(res, "sharded", "FSDPStrategy", lambda: fsdp_restore(env, res))
        part(res, "sharded", "FSDPStrategy(auto_wrap_policy)", lambda: fsdp_wrapped_restore(env, res))
        part(res, "sharded", "FSDPStrategy(use_orig_params=False)", lambda: fsdp_flat_refused(env, res))
    else:
        res.figure("sharded", "FSDPStrategy", "not run: Lightning's FSDPStrategy requires CUDA")
    part(res, "sharded", "ModelParallelStrategy refusal", lambda: model_parallel_refused(env, res))
    part(res, "sharded", "ModelParallelStrategy checkpoint", lambda: model_parallel_checkpoint_restore(env, res))


# ------------------------------------------------------------------------------------------- 7. init_audit
class EpochClock(Callback):
    """Marks ``on_train_start`` (``role="start"``: put it before InitAudit, so the step-0 check counts) or the end of
    the first epoch (``role="end"``: after InitAudit, so its end-of-epoch verdict counts), on the device's clock
    (CUDA events on the stream) or the host's."""

    def __init__(self, cuda: bool, role: str, marks: list[Any]) -> None:
        self.cuda, self.role, self.marks = cuda, role, marks

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.role == "start":
            self._mark()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.role == "end" and trainer.current_epoch == 0:
            self._mark()


def first_epoch_ms(env: Env, audit: InitAudit | None) -> float:
    """One first epoch of the big conv net (GPU-bound steps), with ``audit`` or without, in milliseconds."""
    s = env.sizes
    marks: list[Any] = []
    callbacks: list[Callback] = [EpochClock(env.cuda, "start", marks)]
    callbacks += [audit] if audit is not None else []
    callbacks.append(EpochClock(env.cuda, "end", marks))
    pl.seed_everything(env.seed, verbose=False)
    trainer = make_trainer(env, "init-audit-cost", callbacks, max_epochs=1, limit_val_batches=0)
    net = ConvNet(s.big_channels, s.big_depth, optimizer="fused")
    trainer.fit(net, datamodule=Images(s.big_images, s.big_side, s.big_batch, env.device, env.seed, False))
    start, end = marks
    if env.cuda:
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    return (end - start) * 1e3


def raised(kind: type[Exception], run: Callable[[], None]) -> str:
    """The message of the ``kind`` exception ``run`` raised; empty if it raised none."""
    try:
        run()
    except kind as err:
        return str(err)
    return ""


def init_audit_syncs(env: Env, res: Results) -> None:
    s = env.sizes
    steps = max(1, s.small_images // s.small_batch // 2)  # judged mid-epoch, in on_train_batch_end
    runs = {}
    for arm in ("none", "audit"):
        pl.seed_everything(env.seed, verbose=False)
        callbacks: list[Callback] = [InitAudit(steps=steps)] if arm == "audit" else []
        if not env.cuda:
            callbacks.append(SyncProbe(cuda=False))
        with SyncCounter(env.cuda) as counter:
            trainer = make_trainer(env, f"init-audit-sync-{arm}", callbacks, max_epochs=1)
            trainer.fit(small_net(env), datamodule=small_data(env, stream=False))
        runs[arm] = sync_summary(counter.events)
    res.figure("init_audit", "syncs: details", runs)
    if not env.cuda:
        seen = [runs[arm]["per_batch"] for arm in ("none", "audit")]
        res.check("init_audit", "syncs: the counter saw the CPU probe in both runs", seen == [1, 1], seen, "[1, 1]")
    res.figure(
        "init_audit",
        f"syncs: InitAudit's per-epoch syncs in the first epoch (steps={steps}; hook, site: count)",
        [f"{e['context']}, {e['site']}: {e['count']}" for e in runs["audit"]["epochkit_per_epoch"]],
    )
    res.check(
        "init_audit",
        "syncs: host syncs InitAudit caused in per-batch hooks during the first epoch",
        runs["audit"]["per_batch_epochkit"] == 0,
        runs["audit"]["per_batch_epochkit"],
        "0",
        applies=env.cuda,
    )
    res.check(
        "init_audit",
        "syncs: per-batch syncs with InitAudit - without (whoever's code)",
        runs["audit"]["per_batch"] == runs["none"]["per_batch"],
        runs["audit"]["per_batch"] - runs["none"]["per_batch"],
        "0",
        applies=env.cuda,
    )


def init_audit_cost(env: Env, res: Results) -> None:
    s = env.sizes
    times: dict[str, list[float]] = {"none": [], "audit": []}
    rounds = s.bench_repeats + (1 if s.bench_warmup_round else 0)
    for index in range(rounds):  # interleaved; the first round warms up (cuDNN, the allocator) and is dropped
        for arm in times:
            ms = first_epoch_ms(env, InitAudit() if arm == "audit" else None)
            if index or not s.bench_warmup_round:
                times[arm].append(ms)
    none, audit = statistics.median(times["none"]), statistics.median(times["audit"])
    res.figure(
        "init_audit", "cost: first epoch (from on_train_start), median without / with InitAudit", [none, audit], "ms"
    )
    res.check(
        "init_audit",
        "cost: first epoch with InitAudit / without (the whole check)",
        audit / none <= INIT_AUDIT_TARGET,
        round(audit / none, 4),
        f"<= {INIT_AUDIT_TARGET}",
        applies=env.cuda,
        note=f"{s.big_images // s.big_batch} batches, medians of {s.bench_repeats}",
    )


def init_audit_findings(env: Env, res: Results) -> None:
    s = env.sizes
    steps = max(1, s.small_images // s.small_batch // 2)
    pl.seed_everything(env.seed, verbose=False)
    healthy = InitAudit(on_issue="raise", steps=steps)
    make_trainer(env, "init-audit-healthy", [healthy], max_epochs=1).fit(
        small_net(env), datamodule=small_data(env, stream=False)
    )
    res.check(
        "init_audit",
        "findings: quiet on the default-initialised conv net (no issue)",
        healthy.issues == [] and healthy.symmetry_done_ and healthy.dead_done_,
        [f.message() for f in healthy.findings_] or "no finding",
        "no issue",
    )
    broken = small_net(env)
    with torch.no_grad():
        for p in broken.parameters():
            p.zero_()
    pl.seed_everything(env.seed, verbose=False)
    trainer = make_trainer(env, "init-audit-zero", [InitAudit(on_issue="raise", steps=steps)], max_epochs=1)
    message = raised(InitAuditError, lambda: trainer.fit(broken, datamodule=small_data(env, stream=False)))
    res.check(
        "init_audit",
        "findings: an all-zero conv net caught (InitAuditError, symmetric_units in 'net.0')",
        "symmetric_units in 'net.0'" in message,
        message[:300] or "no error",
        "InitAuditError naming net.0",
    )


def init_audit_refused(env: Env, res: Results) -> None:
    with process_group_port():
        pl.seed_everything(env.seed, verbose=False)
        trainer = make_trainer(env, "init-audit-mp", [InitAudit()], max_epochs=1, strategy=ModelParallelStrategy())
        net = small_net(env, optimizer="float", shard=True)
        message = raised(MisconfigurationException, lambda: trainer.fit(net, datamodule=small_data(env, False)))
    res.check(
        "init_audit",
        "sharded: InitAudit refused at setup under ModelParallelStrategy",
        "InitAudit cannot check a fit under ModelParallelStrategy" in message and trainer.global_step == 0,
        message[:300] or "no error",
        "MisconfigurationException naming the strategy",
    )


def section_init_audit(env: Env, res: Results) -> None:
    part(res, "init_audit", "syncs", lambda: init_audit_syncs(env, res))
    part(res, "init_audit", "cost", lambda: init_audit_cost(env, res))
    part(res, "init_audit", "findings", lambda: init_audit_findings(env, res))
    part(res, "init_audit", "sharded", lambda: init_audit_refused(env, res))


# ------------------------------------------------------------------------------------------------- driver
RUNNERS: dict[str, Callable[[Env, Results], None]] = {
    "syncs": section_syncs,
    "overhead": section_overhead,
    "copies": section_copies,
    "fingerprints": section_fingerprints,
    "correctness": section_correctness,
    "sharded": section_sharded,
    "init_audit": section_init_audit,
}


def quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "epochkit"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*IterableDataset.*__len__.*",
        ".*sync_dist=True.*",
        ".*LeafSpec.*",
        ".*NO_SHARD.*",
        ".*FSDP.state_dict_type.*",
        ".*`weights_only` was not set.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*TF32.*",
        ".*smaller than the logging interval.*",
        ".*ShardedTensor.*",
        ".*Please use DTensor instead.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def print_table(res: Results) -> None:
    data = res.data
    print(
        f"\nepochkit GPU proof on {data['device']}: torch {data['versions']['torch']}, "
        f"Lightning {data['versions']['lightning']}, {data['wall_s']:.0f} s{' (smoke)' if data['smoke'] else ''}"
    )
    for number, name in enumerate(SECTIONS, 1):
        section = data["sections"].get(name)
        if section is None:
            continue
        print(f"\n{number}. {name} ({section['status']}, {section['wall_s']} s)")
        for figure, entry in section["figures"].items():
            if figure.endswith("details"):
                continue  # in the JSON only
            value = entry["value"]
            shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
            if len(shown) > 160:
                shown = shown[:157] + "..."
            print(f"   {figure}: {shown} {entry['unit']}".rstrip())
        for check in (c for c in data["checks"] if c["section"] == name):
            value = json.dumps(check["value"]) if isinstance(check["value"], dict | list) else str(check["value"])
            note = f"  [{check['note']}]" if check["note"] else ""
            print(f"   {check['status'].upper():4}  {check['name']}: {value[:160]} (target {check['target']}){note}")
    failed = res.failed()
    print(f"\n{'ALL CHECKS PASSED' if not failed else f'{len(failed)} CHECK(S) FAILED'}; JSON: {res.out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print(NO_CUDA)
        return 0
    quiet()
    if not cuda:
        torch.set_num_threads(1)  # tiny CPU work: extra threads only contend (10x slower on a shared 2-core box)
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    with tempfile.TemporaryDirectory(prefix="epochkit-gpu-") as tmp:
        env = Env(
            cuda=cuda,
            device=torch.device("cuda", 0) if cuda else torch.device("cpu"),
            sizes=sizes,
            root=Path(tmp),
            seed=args.seed,
        )
        if cuda:
            torch.cuda.set_device(env.device)
        res = Results(args.out, args.smoke, env)
        for name in args.sections:
            section = res.section(name)
            start = time.perf_counter()
            try:
                RUNNERS[name](env, res)
                section["status"] = "done"
            except Exception as err:  # record it and go on: a GPU run is rare, every section's figures count
                section["status"] = "error"
                section["error"] = "".join(traceback.format_exception(err))[-4000:]
                res.check(name, "section ran to the end", False, f"{type(err).__name__}: {err}"[:300], "no exception")
                traceback.print_exc()
            section["wall_s"] = round(time.perf_counter() - start, 2)
            res.write()
        if cuda and not args.smoke and args.sections == list(SECTIONS):
            wall_s = time.perf_counter() - res.started
            res.section("run")["status"] = "done"
            res.check("run", "whole run under 6 minutes", wall_s <= WALL_TARGET_S, wall_s, f"<= {WALL_TARGET_S}")
        res.write()
    print_table(res)
    return 1 if res.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
