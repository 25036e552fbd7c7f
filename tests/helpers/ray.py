"""A real Ray for the tests: a local instance (``ray.init(num_cpus=2, include_dashboard=False)``) and a two-node
cluster on this machine (``ray.cluster_utils.Cluster``), each in its own short temporary directory that is removed
after the shutdown, with the repository importable in the worker processes; and the callbacks fold tasks run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _ray_environment() -> Iterator[Path]:
    """Workers inherit the environment and the working directory of the process that starts Ray: put the repository
    (``tests.helpers``) and this checkout's ``src`` on their path and start them in an empty directory, not in the
    repository. Yields a short temporary directory for Ray's session files (socket paths have a length limit)."""
    temp = Path(tempfile.mkdtemp(prefix="ekray-", dir="/tmp"))
    work = temp / "work"
    work.mkdir()
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTHONPATH", path)
            mp.delenv("RAY_ADDRESS", raising=False)
            mp.setenv("RAY_DEDUP_LOGS", "0")
            # Ray writes the address of the cluster it starts to <RAY_TMPDIR>/ray/ray_current_cluster, /tmp/ray by
            # default: here, inside this temporary directory, so a test neither needs /tmp/ray to exist nor leaves
            # that file behind.
            (temp / "ray").mkdir()
            mp.setenv("RAY_TMPDIR", str(temp))
            mp.chdir(work)
            yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[str]:
    """A new local Ray with ``num_cpus`` CPUs for this process (never one another process started); yields its
    address and shuts it down."""
    import ray

    with _ray_environment() as temp:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp))
        try:
            yield str(context.address_info["gcs_address"])
        finally:
            ray.shutdown()


@contextlib.contextmanager
def two_node_cluster() -> Iterator[Any]:
    """A head node and one worker node, one CPU each, on this machine (this process is not connected to it)."""
    import ray
    from ray.cluster_utils import Cluster

    with _ray_environment() as temp:
        args = {"num_cpus": 1, "include_dashboard": False, "temp_dir": str(temp)}
        cluster = Cluster(initialize_head=True, head_node_args=args)
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            ray.shutdown()  # a connection a failed test left open
            cluster.shutdown()


def _first_time_here(trainer: pl.Trainer, fold: int, epoch: int, path: str) -> int | None:
    """The guard HoldOnce and FailOnce share: in fold ``fold`` (its ``default_root_dir`` is ``fold_<fold>``), at epoch
    ``epoch``, the first time only, across processes and attempts. Creates ``path`` exclusively and returns its open
    descriptor then; returns ``None`` in any other fold or epoch, and when ``path`` already exists (a later attempt)."""
    if Path(trainer.default_root_dir).name != f"fold_{fold}" or trainer.current_epoch != epoch:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None


class HoldOnce(Callback):
    """In fold ``fold``, at the start of epoch ``epoch``, the first time only: write this process's id to
    ``pid_file`` and wait there (for the test to kill the process). Later attempts, and other folds, pass. Changes
    nothing about training."""

    def __init__(self, pid_file: str, fold: int = 1, epoch: int = 2, wait: float = 120.0) -> None:
        self.pid_file = pid_file
        self.fold = fold
        self.epoch = epoch
        self.wait = wait

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fd = _first_time_here(trainer, self.fold, self.epoch, self.pid_file)
        if fd is None:
            return
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid()}, handle)
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError(f"HoldOnce: nobody killed process {os.getpid()} within {self.wait} s")


class FailOnce(Callback):
    """In fold ``fold``, at the end of epoch ``epoch``, the first time only (``marker`` is created then): raise
    ``ValueError``. Changes nothing about training."""

    def __init__(self, marker: str, fold: int = 2, epoch: int = 1) -> None:
        self.marker = marker
        self.fold = fold
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fd = _first_time_here(trainer, self.fold, self.epoch, self.marker)
        if fd is None:
            return
        os.close(fd)
        raise ValueError(f"fold {self.fold} failed on purpose")
