"""A real process killed with SIGKILL loses nothing: the files on disk are whole at every moment, and the rerun
(or the resumed fit) ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]


def _start(kind: str, root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.runs", kind, str(root)],
        cwd=root.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(kind: str, root: Path) -> str:
    proc = _start(kind, root)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "DONE" in out, out
    return out


def _kill_at_line(proc: subprocess.Popen[str], line: str) -> None:
    """SIGKILL ``proc`` as soon as it prints ``line`` (it must print it)."""
    assert proc.stdout is not None
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if text.strip() == line:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return
    proc.wait(timeout=60)
    raise AssertionError(f"the run ended without printing {line!r}:\n{''.join(seen)}")


def _kill_after_next_epoch(proc: subprocess.Popen[str], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after the next epoch ends (the epoch-end and fold-end files are being
    written then); False if it finished without another epoch."""
    assert proc.stdout is not None
    for text in proc.stdout:
        if text.startswith("EPOCH"):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()
            return True
    proc.wait(timeout=60)
    proc.stdout.close()
    return False


def _assert_files_whole(root: Path) -> None:
    """Every file a reader or a rerun may open is whole: JSON parses, torch files load (weights_only)."""
    for path in root.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue  # temporary files of an interrupted atomic write are never read
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".pt", ".ckpt"):
            torch.load(path, weights_only=True)
        elif path.suffix == ".csv":
            assert path.read_text().endswith("\n"), path


def _results(root: Path) -> dict:
    results = json.loads((root / "cv_results.json").read_text())
    return {
        "folds": [
            (f["fold"], f["last"], f["best"], f["kept"], f["kept_epoch"], f["best_epoch"], f["history"])
            for f in results["folds"]
        ],
        "oof": torch.load(root / "oof_predictions.pt", weights_only=True),
        "models": [torch.load(root / f"fold_{k}" / "model.pt", weights_only=True) for k in range(3)],
    }


@pytest.fixture(scope="module")
def clean_cv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted cross-validation the interrupted ones must equal (run once for this module)."""
    root = tmp_path_factory.mktemp("clean") / "clean"
    _run("cv", root)
    return root


def test_a_cross_validation_killed_anywhere_reruns_to_the_uninterrupted_results(tmp_path: Path, clean_cv: Path) -> None:
    root = tmp_path / "killed"
    # In the middle of a fold, at a known epoch...
    _kill_at_line(_start("cv", root), "EPOCH fold_1 1")
    _assert_files_whole(root)
    assert (root / "fold_0" / "fold_result.json").exists() and not (root / "fold_1" / "fold_result.json").exists()
    # ...then at random moments just after an epoch ends (while the epoch's or the fold's files are being written),
    # each rerun getting further, the files checked after every kill.
    rng = random.Random(0)
    kills = 1
    for _ in range(9):
        kills += _kill_after_next_epoch(_start("cv", root), rng.uniform(0.0, 0.05))
        _assert_files_whole(root)
    _run("cv", root)
    assert kills >= 6, f"only {kills} runs were killed before they finished"
    clean, resumed = _results(clean_cv), _results(root)
    assert resumed["folds"] == clean["folds"]
    # Fold 1 was killed mid-way and continued from its last epoch checkpoint, not redone from scratch.
    resumed_from = [f["resumed_from"] for f in json.loads((root / "cv_results.json").read_text())["folds"]]
    assert resumed_from[0] is None and str(resumed_from[1]).endswith("fold_1/resume/last.ckpt"), resumed_from
    torch.testing.assert_close(resumed["oof"], clean["oof"], rtol=0, atol=0)
    for a, b in zip(resumed["models"], clean["models"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_cross_validation_preempted_by_sigterm_exits_143_and_its_rerun_equals_the_clean_run(
    tmp_path: Path, clean_cv: Path
) -> None:
    # What Slurm and Kubernetes send before they kill: Lightning turns it into a SystemExit(None), exit status 0.
    root = tmp_path / "preempted"
    proc = _start("cv", root)
    assert proc.stdout is not None
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if text.strip() == "EPOCH fold_1 1":
            proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out = "".join(seen)
    assert proc.returncode == 143, out
    assert "DONE" not in out and "EPOCH fold_1 3" not in out, out  # it stopped within the epoch it was signalled in
    assert (
        f"CrossValidator: fold 1 was interrupted by SIGTERM; its last finished epoch is saved in {root}/fold_1" in out
    )
    assert f"Run the same cross-validation again with root_dir={str(root)!r} to resume it" in out
    assert "Traceback" not in out, out
    _assert_files_whole(root)
    _run("cv", root)
    clean, resumed = _results(clean_cv), _results(root)
    assert resumed["folds"] == clean["folds"]
    torch.testing.assert_close(resumed["oof"], clean["oof"], rtol=0, atol=0)
    for a, b in zip(resumed["models"], clean["models"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_fit_killed_mid_training_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    _run("fit", tmp_path / "clean")
    root = tmp_path / "killed"
    _kill_at_line(_start("fit", root), "EPOCH killed 2")  # mid-warmup (15 steps = 2.5 epochs of 6 batches)
    assert (root / "ckpt" / "last.ckpt").exists() and not (root / "final.pt").exists()
    torch.load(root / "ckpt" / "last.ckpt", weights_only=True)
    _run("fit", root)
    clean = torch.load(tmp_path / "clean" / "final.pt", weights_only=True)
    resumed = torch.load(root / "final.pt", weights_only=True)
    torch.testing.assert_close(resumed, clean, rtol=0, atol=0)
