"""CrossValidator on a real local Ray (``RayExecutor``): the folds run as Ray tasks and everything equals the
sequential run (CPU, deterministic algorithms): per-fold metrics and histories, out-of-fold predictions, the files in
root_dir, the TensorBoard runs and summary, the ensemble. A worker killed mid-fold is retried and resumes; a rerun
skips finished folds; resources no node has, a root_dir the nodes do not share and a missing Ray fail clearly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from epochkit import CrossValidator
from epochkit.cv import CVResult, RayExecutor
from tests.helpers import QUIET, RegressionDataModule, RegressionModule, read_tensorboard
from tests.helpers.ray import FailOnce, HoldOnce, local_ray

pytestmark = pytest.mark.processes  # Ray starts (and the tests kill) worker processes

KWARGS: dict[str, Any] = {**QUIET, "logger": True, "enable_checkpointing": True, "max_epochs": 4, "deterministic": True}


def _data() -> RegressionDataModule:
    return RegressionDataModule(num_samples=36, batch_size=6)


def _nan_equal(a: Any, b: Any) -> bool:
    """Equal, NaN included (an aggregate over folds that lack a metric is NaN, and NaN != NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _fit(root: Path, executor: RayExecutor | None = None, **kwargs: Any) -> CVResult:
    torch.manual_seed(0)  # the same initial weights in every run
    cv = CrossValidator(3, root_dir=root, verbose=False, executor=executor)
    return cv.fit(RegressionModule(), _data(), trainer_kwargs={**KWARGS, **kwargs})


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with local_ray(num_cpus=2) as address:
        yield address


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> CVResult:
    """The in-process run every Ray run is compared with (one torch thread, as each fold task uses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(tmp_path_factory.mktemp("sequential") / "cv")
    finally:
        torch.set_num_threads(threads)


def _files(root: Path) -> set[str]:
    """Every file under root, event files by directory only (their names hold the host, pid and time)."""
    names = set()
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root)
            names.add(str(rel.parent / "events") if rel.name.startswith("events.out.tfevents") else str(rel))
    return names


def _assert_equal_results(ray_result: CVResult, sequential: CVResult) -> None:
    assert [f.fold for f in ray_result.folds] == [0, 1, 2]
    for a, b in zip(ray_result.folds, sequential.folds, strict=True):
        assert a.last == b.last and a.best == b.best and a.best_epoch == b.best_epoch
        assert a.kept == b.kept and a.kept_epoch == b.kept_epoch and a.kept
        assert a.history == b.history
        assert a.weights_checksum == b.weights_checksum
        torch.testing.assert_close(torch.load(a.model_path), torch.load(b.model_path), rtol=0, atol=0)
    assert np.array_equal(ray_result.oof_index, sequential.oof_index)
    assert torch.equal(ray_result.oof_predictions, sequential.oof_predictions)
    assert _nan_equal(ray_result.aggregate(), sequential.aggregate())


def test_folds_on_ray_equal_the_sequential_run(
    ray_address: str, sequential: CVResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cv"
    result = _fit(root, RayExecutor(max_concurrent=2))
    _assert_equal_results(result, sequential)

    # The folds ran in Ray worker processes, not here; each records where.
    workers = [f.worker for f in result.folds]
    assert all(w["pid"] != os.getpid() and w["node_id"] for w in workers)
    assert [json.loads((root / f"fold_{k}" / "worker.json").read_text())["pid"] for k in range(3)] == [
        w["pid"] for w in workers
    ]

    # The same files in root_dir; the driver's results, summary and ensemble are the same.
    seq_root = Path(sequential.root_dir)
    assert _files(root) == _files(seq_root)
    assert not [p for p in root.rglob(".*")], "a marker or temporary file was left behind"
    saved, expected = (json.loads((r / "cv_results.json").read_text()) for r in (root, seq_root))
    assert _nan_equal(saved["aggregate"], expected["aggregate"]) and saved["folds_done"] == [0, 1, 2]
    for k in range(3):
        assert read_tensorboard(root / f"fold_{k}").scalars == read_tensorboard(seq_root / f"fold_{k}").scalars
    summary, seq_summary = read_tensorboard(root / "summary"), read_tensorboard(seq_root / "summary")
    assert summary.scalars == seq_summary.scalars and summary.scalars
    x = _data()
    x.setup("fit")
    inputs = x.train_set.tensors[0][:5]
    with torch.no_grad():
        assert torch.equal(result.ensemble()(inputs), sequential.ensemble()(inputs))

    # The driver's progress bar over the folds ended at 3 of 3 with the last fold's headline metric.
    err = capsys.readouterr().err
    assert re.search(r"folds: 100%.*3/3 \[.*running 0, queued 0, last fold \d: val_loss \d\.\d{4}", err), err[-2000:]

    # A rerun skips every finished fold: nothing is submitted, the results are the same.
    mtimes = {k: (root / f"fold_{k}" / "fold_result.json").stat().st_mtime_ns for k in range(3)}
    again = _fit(root, RayExecutor(max_concurrent=2))
    assert {k: (root / f"fold_{k}" / "fold_result.json").stat().st_mtime_ns for k in range(3)} == mtimes
    _assert_equal_results(again, sequential)


def _kill_when_held(pid_file: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
            continue
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return


def test_a_worker_killed_mid_fold_is_retried_and_resumes_to_the_same_results(
    ray_address: str, sequential: CVResult, tmp_path: Path
) -> None:
    pid_file = tmp_path / "held.json"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_held, args=(pid_file, killed), daemon=True)
    killer.start()
    root = tmp_path / "cv"
    # Fold 1 is held at the start of its epoch 2 (epochs 0 and 1 checkpointed) and its worker SIGKILLed there.
    result = _fit(root, RayExecutor(max_retries=1), callbacks=[HoldOnce(str(pid_file), fold=1, epoch=2)])
    killer.join(timeout=5)

    assert len(killed) == 1
    fold1 = result.folds[1]
    assert fold1.worker["pid"] != killed[0]  # Ray reran it in another worker process
    assert fold1.resumed_from == str(root / "fold_1" / "resume" / "last.ckpt")
    assert result.folds[0].resumed_from is None and result.folds[2].resumed_from is None
    _assert_equal_results(result, sequential)
    # TensorBoard shows every training step of the resumed fold once, as in the uninterrupted run.
    seq_root = Path(sequential.root_dir)
    resumed, uninterrupted = (read_tensorboard(r / "fold_1").scalars for r in (root, seq_root))
    assert {t: v for t, v in resumed.items() if not t.startswith("cv/")} == {
        t: v for t, v in uninterrupted.items() if not t.startswith("cv/")
    }


def test_with_max_retries_0_a_killed_fold_is_not_rerun_and_the_run_fails_saying_so(
    ray_address: str, tmp_path: Path
) -> None:
    # Ray's own default reruns a task whose worker died 3 times: max_retries=0 must reach Ray and stop at the kill.
    pid_file = tmp_path / "held.json"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_held, args=(pid_file, killed), daemon=True)
    killer.start()
    root = tmp_path / "cv"
    cv = CrossValidator(2, root_dir=root, verbose=False, executor=RayExecutor(max_retries=0, max_concurrent=1))
    hold = HoldOnce(str(pid_file), fold=0, epoch=0)
    with pytest.raises(RuntimeError, match=r"fold 0: its Ray task died 1 time\(s\) \(max_retries=0; "):
        cv.fit(RegressionModule(), _data(), trainer_kwargs={**QUIET, "max_epochs": 1, "callbacks": [hold]})
    killer.join(timeout=5)
    assert len(killed) == 1
    assert not list(root.glob("fold_*/fold_result.json")), "a fold finished"


def test_resources_no_node_has_fail_with_a_message_not_a_hang(ray_address: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        _fit(tmp_path / "cv", RayExecutor(cpus_per_fold=3, schedule_timeout=1))
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "no node of the Ray cluster can run a fold, which needs CPU 3, GPU 0" in message
    assert re.search(r"the nodes have: \S+ \(node [0-9a-f]{8}\) CPU 2, GPU 0", message), message
    assert "schedule_timeout" in message
    assert not list((tmp_path / "cv").glob("fold_*")), "a fold ran"

    # A GPU fold on this CPU-only cluster: the same, after the settings were checked against the resources.
    with pytest.raises(RuntimeError, match=r"needs CPU 1, GPU 1; the nodes have: .* GPU 0"):
        CrossValidator(
            2, root_dir=tmp_path / "gpu", verbose=False, executor=RayExecutor(gpus_per_fold=1, schedule_timeout=1)
        ).fit(RegressionModule(), _data(), trainer_kwargs={"max_epochs": 1})


def test_a_failing_fold_stops_the_run_with_its_own_error_and_the_rerun_resumes(
    ray_address: str, sequential: CVResult, tmp_path: Path
) -> None:
    root = tmp_path / "cv"
    fail = FailOnce(str(tmp_path / "failed"), fold=2, epoch=1)
    with pytest.raises(ValueError, match="fold 2 failed on purpose"):
        _fit(root, RayExecutor(), callbacks=[fail])
    assert not (root / "fold_2" / "fold_result.json").exists()
    assert (root / "fold_2" / "resume" / "last.ckpt").exists()
    result = _fit(root, RayExecutor(), callbacks=[fail])  # the same settings; it passes now
    assert result.folds[2].resumed_from == str(root / "fold_2" / "resume" / "last.ckpt")
    _assert_equal_results(result, sequential)


def test_root_dir_not_shared_with_the_nodes_fails_naming_the_path_and_the_node(
    ray_address: str, tmp_path: Path
) -> None:
    """``/proc/self/cwd/cv`` names another directory in every process whose working directory differs: here this
    test's ``tmp_path``, in the Ray workers the directory Ray was started in. So the node's tasks write their marker
    where the driver does not look, as with a node-local disk mounted at the same path on every machine."""
    root = Path("/proc/self/cwd/cv")
    with pytest.raises(RuntimeError) as info:
        CrossValidator(2, root_dir=root, verbose=False, executor=RayExecutor()).fit(
            RegressionModule(), _data(), trainer_kwargs={**KWARGS, "max_epochs": 1}
        )
    message = str(info.value)
    assert re.search(
        rf"CrossValidator root_dir {re.escape(str(root))} is not shared with node \S+ \(node [0-9a-f]{{8}}\): a task "
        r"there wrote .*\.json, which the driver \(host \S+\) cannot read",
        message,
    ), message
    assert "NFS" in message
    assert not list((tmp_path / "cv").glob("fold_*")), "a fold ran"
    assert not list((tmp_path / "cv").glob(".epochkit-*")), "the driver left a marker"


def test_without_ray_the_executor_fails_at_construction_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as when it is not installed
    with pytest.raises(
        ImportError, match=re.escape('RayExecutor needs Ray, which is not installed: pip install "epochkit[ray]"')
    ):
        RayExecutor()


def test_the_refit_runs_as_one_ray_task_and_equals_the_in_process_refit(ray_address: str, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray task does
    try:
        torch.manual_seed(0)
        model = RegressionModule()
        cv = CrossValidator(3, root_dir=tmp_path / "here", verbose=False)
        cv.fit(model, _data(), trainer_kwargs={**KWARGS, "max_epochs": 2})
        shutil.copytree(tmp_path / "here", tmp_path / "ray")  # the finished folds: the Ray run refits only
        here = cv.refit(model, _data(), epochs=3)
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    shipped = RegressionModule()
    on_ray = CrossValidator(3, root_dir=tmp_path / "ray", verbose=False, executor=RayExecutor(max_concurrent=2))
    on_ray.fit(shipped, _data(), trainer_kwargs={**KWARGS, "max_epochs": 2})  # every fold skipped
    remote = on_ray.refit(shipped, _data(), epochs=3)
    assert json.loads((tmp_path / "ray" / "final" / "worker.json").read_text())["pid"] != os.getpid()
    assert (remote.epochs, remote.n_samples, remote.estimate) == (here.epochs, here.n_samples, here.estimate)
    final = torch.load(tmp_path / "ray" / "final" / "model.pt")
    torch.testing.assert_close(final, torch.load(tmp_path / "here" / "final" / "model.pt"), rtol=0, atol=0)
    torch.testing.assert_close(shipped.state_dict(), final, rtol=0, atol=0)  # loaded into the driver's model
