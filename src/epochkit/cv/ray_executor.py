"""``RayExecutor``: the folds of a :class:`~epochkit.cv.CrossValidator` side by side, one Ray task per fold, on a
local Ray or a cluster.

Ray (``pip install "epochkit[ray]"``) schedules the folds on the nodes' CPUs and GPUs and retries a fold whose worker
process or node died; epochkit keeps every guarantee of the in-process loop, because each task runs the same fold
body (:func:`epochkit.cv.fold.run_fold`) on the driver's snapshot, shipped once through Ray's object store and
verified by checksum in the task. The driver makes the plan and the manifest, writes the results as each fold
finishes and shows a progress bar over the folds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from epochkit._io import write_json_atomic
from epochkit._validation import check_bool, check_int, check_number, fail
from epochkit.cv.data import find_training_dataset
from epochkit.cv.fold import (
    LIGHTNING_INFO_LOGGERS,
    WORKER_FILE,
    FoldJob,
    FoldOutcome,
    FoldSpec,
    RepeatedInfoDropped,
    run_fold,
)
from epochkit.cv.results import FoldResult

__all__ = ["RayExecutor"]

log = logging.getLogger("epochkit.cv")

OWNER = "RayExecutor"
INSTALL = 'pip install "epochkit[ray]"'
_GPU_ACCELERATORS = ("gpu", "cuda")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"RayExecutor needs Ray, which is not installed: {INSTALL}") from err
    return ray


class RayExecutor:
    """Run each unfinished fold of a :class:`~epochkit.cv.CrossValidator` as a Ray task.

    ``CrossValidator(..., executor=RayExecutor())`` runs the folds side by side on a local Ray (started for the
    ``fit`` and shut down after it) or on the cluster Ray finds. Every fold gets what the in-process loop gives it
    (the driver's snapshot, verified by checksum in the task; fresh callbacks, Trainer and TensorBoard run; seed
    ``seed + k``), and its per-fold results, out-of-fold predictions, summary and ensemble equal the sequential
    run's. ``root_dir`` must be one directory every node sees (shared storage): it is checked before any fold runs.

    How a fold's ``trainer_kwargs`` map onto its resources (checked before anything runs; a disagreement is an
    error): with ``gpus_per_fold=0`` the fold trains on the CPU (``accelerator`` ``"cpu"``, ``"auto"`` or left
    out), as ``devices`` processes (default 1; at most ``cpus_per_fold``); with ``gpus_per_fold=G`` it trains on the
    ``G`` GPUs Ray gave the task (``accelerator`` ``"gpu"``, ``"cuda"``, ``"auto"`` or left out; ``devices`` ``G``,
    ``-1``, ``"auto"`` or left out; a fraction of a GPU trains on one device). Several processes inside one fold need
    a strategy that spawns them (``"ddp_spawn"``, ``DDPStrategy(start_method="spawn")``): ``"ddp"`` relaunches the
    script, which a Ray task is not. One fold spans one node (``num_nodes=1``). A fold that leaves
    ``enable_progress_bar`` out gets none (the driver's bar over the folds replaces it). Each task runs
    ``torch.set_num_threads(max(1, floor(cpus_per_fold)))``.

    Args:
        address: The Ray cluster, as ``ray.init(address=...)`` takes it: ``None`` joins the cluster in
            ``RAY_ADDRESS`` or one started with ``ray start`` on this machine, else starts a local Ray sized to the
            machine; ``"local"`` always starts one; ``"auto"``, ``"host:port"`` or ``"ray://host:port"`` join one.
            If Ray is already initialised in this process, that connection is used and left open.
        cpus_per_fold: CPUs each fold's task reserves (a fraction is allowed).
        gpus_per_fold: GPUs each fold's task reserves; Ray sets ``CUDA_VISIBLE_DEVICES`` to them.
        max_concurrent: At most this many folds at once (default: as many as the cluster's free resources fit).
        max_retries: How often Ray reruns a fold whose worker process or node died; the rerun resumes from the
            fold's last epoch checkpoint (``resume_checkpoints=True``). An exception raised by the fold is not
            retried: the cross-validation stops with it.
        schedule_timeout: Seconds to wait for a node that can run a fold (for an autoscaling cluster to add one)
            before failing with the resources asked for and those the nodes have.
        progress: Show a progress bar over the folds on the driver (stderr): folds finished, running (their Ray
            task placed on a worker: from Ray's resource accounting when this executor started Ray, else from the
            folds that began training) and queued, and the last fold's headline metric.
        verbose: Let Ray's own messages (its start-up lines and warnings, such as the token-authentication notice)
            and the folds' console output (Lightning's banner and model summary, warnings from the fold's code,
            each line prefixed and coloured by Ray, repeated lines deduplicated) reach this console. Off by default:
            the driver shows the bar and epochkit's lines only; a fold's exception still comes back with its
            traceback, and the workers' output stays in Ray's session logs (``/tmp/ray/session_latest/logs``).
            Applies when this executor connects to Ray (``ray.init``); a Ray already initialised in this process
            keeps its own settings.
        runtime_env: Ray's ``runtime_env`` for the fold tasks (e.g. ``{"working_dir": "."}`` to ship your code to a
            remote cluster; epochkit must be installed on every node).

    Raises:
        ImportError: At construction, if Ray is not installed (with the install line).

    Example:
        >>> RayExecutor(cpus_per_fold=2, max_concurrent=4).cpus_per_fold
        2
    """

    def __init__(
        self,
        address: str | None = None,
        cpus_per_fold: float = 1,
        gpus_per_fold: float = 0,
        max_concurrent: int | None = None,
        max_retries: int = 2,
        *,
        schedule_timeout: float = 300.0,
        progress: bool = True,
        runtime_env: Mapping[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            fail(OWNER, "address", address, "None or a Ray address such as 'auto', 'local' or 'host:6379'", TypeError)
        check_number(OWNER, "cpus_per_fold", cpus_per_fold, above=0.0)
        check_number(OWNER, "gpus_per_fold", gpus_per_fold, minimum=0.0)
        if gpus_per_fold > 1 and float(gpus_per_fold) != int(gpus_per_fold):
            fail(OWNER, "gpus_per_fold", gpus_per_fold, "a fraction below 1 or a whole number of GPUs")
        if max_concurrent is not None:
            check_int(OWNER, "max_concurrent", max_concurrent, minimum=1)
        check_int(OWNER, "max_retries", max_retries, minimum=0)
        check_number(OWNER, "schedule_timeout", schedule_timeout, above=0.0)
        check_bool(OWNER, "progress", progress)
        check_bool(OWNER, "verbose", verbose)
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            fail(OWNER, "runtime_env", runtime_env, "None or a mapping (Ray's runtime_env)", TypeError)
        _import_ray()
        self.address = address
        self.cpus_per_fold = cpus_per_fold
        self.gpus_per_fold = gpus_per_fold
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.schedule_timeout = schedule_timeout
        self.progress = progress
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        self.verbose = verbose

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, cpus_per_fold={self.cpus_per_fold}, "
            f"gpus_per_fold={self.gpus_per_fold}, max_concurrent={self.max_concurrent}, "
            f"max_retries={self.max_retries})"
        )

    # ------------------------------------------------------------------------------- trainer settings
    @property
    def _devices(self) -> int:
        """Devices (processes) one fold trains on: its whole GPUs, or one for a fraction of a GPU."""
        return max(1, int(self.gpus_per_fold)) if self.gpus_per_fold > 0 else 1

    def fold_trainer_kwargs(self, trainer_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The Trainer arguments a fold's task uses: ``trainer_kwargs`` checked against the resources and completed
        (``accelerator``, ``devices``, no progress bar unless asked for); see the class docstring.

        Raises:
            ValueError: If the arguments and the resources disagree.
        """
        kwargs = dict(trainer_kwargs or {})
        where = f"{self!r} with trainer_kwargs"
        accelerator = kwargs.get("accelerator", "auto")
        if not isinstance(accelerator, str):
            raise ValueError(
                f"{where} accelerator={accelerator!r}: give the accelerator by name ('cpu', 'gpu' or 'auto'); the "
                "fold's resources decide where it trains."
            )
        accelerator = accelerator.lower()
        gpus = self.gpus_per_fold > 0
        if accelerator == "auto":
            accelerator = "gpu" if gpus else "cpu"
        if gpus and accelerator not in _GPU_ACCELERATORS:
            raise ValueError(
                f"{where} accelerator={kwargs['accelerator']!r}: the fold reserves {self.gpus_per_fold} GPU(s) but "
                "would not use them; use accelerator='gpu' (or leave it out), or gpus_per_fold=0."
            )
        if not gpus and accelerator != "cpu":
            raise ValueError(
                f"{where} accelerator={kwargs['accelerator']!r}: the fold reserves no GPU (gpus_per_fold=0), and a "
                "task that uses a GPU it did not reserve shares it with whatever Ray places there; give "
                "gpus_per_fold >= 1, or accelerator='cpu'."
            )
        kwargs["accelerator"] = accelerator
        devices = kwargs.get("devices", "auto")
        if devices in ("auto", -1, "-1") or (gpus and devices is None):
            devices = self._devices
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise ValueError(
                f"{where} devices={kwargs.get('devices')!r}: give a number of devices (or leave it out); Ray chooses "
                "which GPUs a task gets and sets CUDA_VISIBLE_DEVICES to them."
            )
        if gpus and devices != self._devices:
            raise ValueError(
                f"{where} devices={devices}: each fold trains on the {self._devices} GPU(s) its task reserves; "
                f"give devices={self._devices} (or leave it out), or gpus_per_fold={devices}."
            )
        if not gpus and devices > max(1, math.floor(self.cpus_per_fold)):
            raise ValueError(
                f"{where} devices={devices}: on the CPU a fold runs {devices} processes; reserve a CPU for each "
                f"with cpus_per_fold >= {devices}."
            )
        kwargs["devices"] = devices
        num_nodes = kwargs.get("num_nodes", 1)
        if num_nodes != 1:
            raise ValueError(
                f"{where} num_nodes={num_nodes!r}: one fold runs on one node in this release (a fold spanning "
                "several nodes would need Ray Train's TorchTrainer); use num_nodes=1."
            )
        if devices > 1:
            _check_spawning_strategy(kwargs.get("strategy", "auto"), where)
        kwargs.setdefault("enable_progress_bar", False)
        return kwargs

    def check_trainer(self, trainer: pl.Trainer, spec: FoldSpec) -> None:
        """In the task, before the fold trains: the Trainer (from ``trainer_factory`` too) uses the task's resources.

        Raises:
            ValueError: If it trains on another accelerator or number of devices, on several nodes, or with a
                strategy that relaunches the script.
        """
        where = f"fold {spec.fold}: {self!r}, but the fold's Trainer"
        on_gpu = type(trainer.accelerator).__name__ == "CUDAAccelerator"
        gpus = self.gpus_per_fold > 0
        if gpus != on_gpu:
            wanted = f"the {self._devices} GPU(s) it reserves" if gpus else "the CPU (it reserves no GPU)"
            raise ValueError(f"{where} uses {type(trainer.accelerator).__name__}; it must train on {wanted}.")
        if gpus and trainer.num_devices != self._devices:
            raise ValueError(f"{where} has devices={trainer.num_devices}; it must use the {self._devices} reserved.")
        if not gpus and trainer.num_devices > max(1, math.floor(self.cpus_per_fold)):
            raise ValueError(f"{where} runs {trainer.num_devices} processes; reserve a CPU for each (cpus_per_fold).")
        if trainer.num_nodes != 1:
            raise ValueError(f"{where} has num_nodes={trainer.num_nodes}; one fold runs on one node.")
        launcher = getattr(trainer.strategy, "launcher", None)
        if type(launcher).__name__ == "_SubprocessScriptLauncher":
            raise ValueError(
                f"{where} uses {type(trainer.strategy).__name__}, which relaunches the script for its other "
                "processes; a Ray task is no script: use strategy='ddp_spawn'."
            )

    # ------------------------------------------------------------------------------------------ running
    def run(self, specs: Sequence[FoldSpec], job: FoldJob) -> Generator[FoldOutcome, None, None]:
        """Run the folds as Ray tasks and yield each outcome as its fold finishes (in any order).

        Closing the iterator (or an error) cancels the folds still running; they resume from their last epoch
        checkpoint in a rerun.
        """
        if not specs:
            return
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            log.info("RayExecutor: connecting to or starting Ray (address=%r)", self.address)
            ray.init(
                address=self.address,
                include_dashboard=False,
                # Quiet unless asked: no worker output (prefixed, coloured, deduplicated) and no Ray notices here.
                log_to_driver=self.verbose,
                logging_level=logging.INFO if self.verbose else logging.ERROR,
            )
        root = Path(specs[0].root_dir)
        run_id = specs[0].run_id
        marker = root / f".epochkit-driver-{run_id}.json"
        running: dict[Any, FoldSpec] = {}
        bar = _FoldBar(len(specs), enabled=self.progress)
        try:
            nodes = self._wait_for_a_node(ray)
            self._check_shared_storage(ray, root, run_id, nodes)
            write_json_atomic(marker, {"run_id": run_id, "host": socket.gethostname()})
            # The model and the data go to the object store once; every task reads them from there.
            payload = ray.put((job.model, job.datamodule))
            task = ray.remote(_fold_task).options(
                num_cpus=self.cpus_per_fold,
                num_gpus=self.gpus_per_fold,
                max_retries=self.max_retries,
                retry_exceptions=False,
                name="epochkit-fold",
                **({"runtime_env": self.runtime_env} if self.runtime_env is not None else {}),
            )
            queue = deque(specs)
            submitted: dict[int, float] = {}
            while queue or running:
                while queue and (self.max_concurrent is None or len(running) < self.max_concurrent):
                    spec = queue.popleft()
                    running[task.remote(spec, payload, self)] = spec
                    submitted[spec.fold] = time.time()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    spec = running.pop(ref)
                    outcome = self._get(ray, ref, spec)
                    bar.finished(outcome.result, _headline(outcome.result, spec.metric_modes))
                    yield outcome
                started = _started_folds(running.values(), run_id)
                if started_here:  # nothing but these folds uses this Ray: its busy CPUs are the folds placed
                    started = max(started, self._placed_folds(ray))
                bar.show(min(started, len(running)), len(running), len(queue))
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            bar.close()
            marker.unlink(missing_ok=True)
            if started_here:
                ray.shutdown()

    def _get(self, ray: Any, ref: Any, spec: FoldSpec) -> FoldOutcome:
        from ray import exceptions as rex

        try:
            outcome: FoldOutcome = ray.get(ref)
        except rex.RayTaskError:
            log.error("RayExecutor: fold %d failed; the folds still running are cancelled", spec.fold)
            raise  # the fold's own exception type (Ray's copy of it carries the task's traceback)
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.LocalRayletDiedError) as err:
            raise RuntimeError(
                f"fold {spec.fold}: its Ray task died {self.max_retries + 1} time(s) (max_retries="
                f"{self.max_retries}; {type(err).__name__}: {str(err).strip().splitlines()[0]}). Rerun the "
                "cross-validation to resume the fold from its last epoch checkpoint."
            ) from err
        where = outcome.result.worker
        log.info("RayExecutor: fold %d finished on %s (pid %s)", spec.fold, where.get("node_ip"), where.get("pid"))
        return outcome

    def _placed_folds(self, ray: Any) -> int:
        """Folds whose task Ray has placed on a worker (starting or training), from the CPUs in use: on a Ray only
        this run uses, each fold task holds ``cpus_per_fold`` of them (the node probes hold none)."""
        total = ray.cluster_resources().get("CPU", 0.0)
        free = ray.available_resources().get("CPU", 0.0)  # a resource fully in use is left out
        return round(max(0.0, total - free) / self.cpus_per_fold)

    # ------------------------------------------------------------------------------------------ checks
    def _fits(self, resources: Mapping[str, float]) -> bool:
        return resources.get("CPU", 0) >= self.cpus_per_fold and resources.get("GPU", 0) >= self.gpus_per_fold

    def _wait_for_a_node(self, ray: Any) -> list[dict[str, Any]]:
        """The alive nodes that can run a fold; waits ``schedule_timeout`` for one (autoscaling), then fails."""
        deadline = time.monotonic() + self.schedule_timeout
        warned = False
        while True:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            fitting = [n for n in alive if self._fits(n.get("Resources", {}))]
            if fitting:
                return fitting
            need = f"CPU {self.cpus_per_fold:g}, GPU {self.gpus_per_fold:g}"
            have = "; ".join(_describe_node(n) for n in alive) or "none"
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self!r}: no node of the Ray cluster can run a fold, which needs {need}; the nodes have: "
                    f"{have}. Waited {self.schedule_timeout:g} s (schedule_timeout) for one to join. Ask for fewer "
                    "resources per fold, or add a node that has them."
                )
            if not warned:
                log.warning(
                    "RayExecutor: no node can run a fold (needs %s; nodes: %s); waiting up to %g s for one to join",
                    need,
                    have,
                    self.schedule_timeout,
                )
                warned = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _check_shared_storage(self, ray: Any, root: Path, run_id: str, nodes: list[dict[str, Any]]) -> None:
        """Every node that can run a fold writes a marker into ``root``, and the driver must read each one."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe_dir = root / f".epochkit-nodes-{run_id}"
        probe = ray.remote(_write_node_marker)
        refs = [
            probe.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                **({"runtime_env": self.runtime_env} if self.runtime_env is not None else {}),
            ).remote(str(probe_dir / f"{node['NodeID']}.json"), run_id)
            for node in nodes
        ]
        try:
            answers = ray.get(refs, timeout=self.schedule_timeout)
            for node, (path, error) in zip(nodes, answers, strict=True):
                name = _describe_node(node, resources=False)
                if error is not None:
                    raise RuntimeError(f"CrossValidator root_dir {root} is not writable on node {name}: {error}")
                if not _marker_ok(Path(path), run_id):
                    raise RuntimeError(
                        f"CrossValidator root_dir {root} is not shared with node {name}: a task there wrote {path}, "
                        f"which the driver (host {socket.gethostname()}) cannot read. Every node must see root_dir "
                        "at the same path (a network or cluster file system such as NFS); a local disk is not."
                    )
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ what runs in the tasks
_WORKER_QUIET: list[RepeatedInfoDropped] = []  # the filter of this Ray worker process, once installed


def _write_node_marker(path: str, run_id: str) -> tuple[str, str | None]:
    try:
        write_json_atomic(path, {"run_id": run_id, "host": socket.gethostname()})
    except OSError as err:
        return path, str(err)
    return path, None


def _marker_ok(path: Path, run_id: str) -> bool:
    import json

    try:
        return bool(json.loads(path.read_text()).get("run_id") == run_id)
    except (OSError, ValueError):
        return False


def _fold_task(spec: FoldSpec, payload: tuple[Any, Any], executor: RayExecutor) -> FoldOutcome:
    """One fold in a Ray worker process: check the shared directory, then the fold body."""
    import ray

    if not _WORKER_QUIET:  # as in the in-process loop: Lightning's banner and tips once per worker, not per fold
        _WORKER_QUIET.append(RepeatedInfoDropped(LIGHTNING_INFO_LOGGERS).__enter__())
    torch.set_num_threads(max(1, math.floor(executor.cpus_per_fold)))
    worker = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
    }
    marker = Path(spec.root_dir) / f".epochkit-driver-{spec.run_id}.json"
    if not _marker_ok(marker, spec.run_id):
        raise RuntimeError(
            f"fold {spec.fold}: CrossValidator root_dir {spec.root_dir} is not shared with node {worker['node_ip']} "
            f"({worker['node_id'][:8]}, host {worker['host']}): the driver's {marker.name} is not there. Every node "
            "must see root_dir at the same path (a network or cluster file system such as NFS)."
        )
    model, datamodule = payload
    dataset: Any = find_training_dataset(datamodule)
    if len(dataset) != spec.n_samples:
        raise RuntimeError(
            f"fold {spec.fold}: the DataModule that reached this task has {len(dataset)} training samples, the plan "
            f"{spec.n_samples}."
        )
    job = FoldJob(model, datamodule, dataset, check_trainer=executor.check_trainer, worker=worker)
    return run_fold(spec, job)


# -------------------------------------------------------------------------------------------- helpers
def _check_spawning_strategy(strategy: Any, where: str) -> None:
    """Several processes in one fold: the strategy must spawn (or fork) them, not relaunch the script."""
    if isinstance(strategy, str):
        name = strategy.lower()
        if name in ("ddp_spawn", "ddp_fork", "ddp_notebook") or name.startswith(("ddp_spawn_", "ddp_fork_")):
            return
        problem = f"strategy={strategy!r}"
    else:
        if getattr(strategy, "_start_method", None) in ("spawn", "fork", "forkserver"):
            return
        problem = f"strategy={type(strategy).__name__}(start_method={getattr(strategy, '_start_method', None)!r})"
    raise ValueError(
        f"{where} {problem}: several processes per fold need a strategy that spawns them inside the task "
        "(strategy='ddp_spawn', or DDPStrategy(start_method='spawn')); 'ddp' relaunches the script, and a Ray task "
        "is no script."
    )


def _describe_node(node: Mapping[str, Any], resources: bool = True) -> str:
    text = f"{node.get('NodeManagerAddress', '?')} (node {str(node.get('NodeID', '?'))[:8]})"
    if resources:
        res = node.get("Resources", {})
        text += f" CPU {res.get('CPU', 0):g}, GPU {res.get('GPU', 0):g}"
    return text


def _started_folds(specs: Any, run_id: str) -> int:
    """How many of the submitted folds have started: their task wrote ``fold_k/worker.json`` for this run."""
    import json

    started = 0
    for spec in specs:
        with contextlib.suppress(OSError, ValueError):
            started += json.loads((spec.fold_dir / WORKER_FILE).read_text()).get("run_id") == run_id
    return started


def _headline(result: FoldResult, modes: Mapping[str, str]) -> str:
    """The fold's headline metric (of the model it kept, else of its last epoch): a monitored one, else the first
    validation metric, else the first."""
    values = result.kept or result.last
    names = [n for n in modes if n in values] or sorted(n for n in values if n.startswith("val")) or sorted(values)
    return f"{names[0]} {values[names[0]]:.4f}" if names else ""


class _FoldBar:
    """The driver's bar over the folds: finished / running / queued, elapsed and ETA (tqdm), the last fold's
    headline metric. Redrawn when something changes, and every second on a terminal (for the clock)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        self.last = ""
        self.state = ""
        self.drawn = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="folds", unit="fold", file=sys.stderr, dynamic_ncols=True)
            self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())

    def finished(self, result: FoldResult, headline: str) -> None:
        self.last = f"fold {result.fold}: {headline}" if headline else f"fold {result.fold}"
        if self.bar is not None:
            self.bar.update(1)

    def show(self, started: int, running: int, queued: int) -> None:
        if self.bar is None:
            return
        parts = [f"running {started}", f"queued {queued + running - started}"]
        if self.last:
            parts.append(f"last {self.last}")
        state = ", ".join(parts)
        if state != self.state or (self.tty and time.monotonic() - self.drawn >= 1.0):
            self.state, self.drawn = state, time.monotonic()
            self.bar.set_postfix_str(state, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
