"""Every benchmark script runs to the end in its ``--quick`` mode, so that a renamed or removed name of epochkit that a
benchmark uses breaks this test rather than the next ``make bench``. Scripts are found by glob: a new
``benchmarks/NAME.py`` is run here as soon as it exists (it must accept ``--quick``). ``gpu.py`` has its own test
(``tests/test_gpu_benchmark.py``, its ``--smoke`` mode and its checks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import run_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OWN_TEST = {"gpu.py"}  # tests/test_gpu_benchmark.py
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.name not in OWN_TEST)


def test_scripts_are_found() -> None:
    assert {"cv.py", "early_stopping.py", "shuffle_audit.py", "warmup_overhead.py"} <= set(SCRIPTS)


@pytest.mark.parametrize(
    "script",
    # cv_ray.py starts a local Ray: its processes make it a `processes` test (`make stress` loops it).
    [pytest.param(s, marks=pytest.mark.processes) if s == "cv_ray.py" else s for s in SCRIPTS],
)
def test_benchmark_runs_to_the_end_quick(script: str, tmp_path: Path) -> None:
    # Temporary files of the script (checkpoints, loggers, Ray's session) go under tmp_path; CUDA is hidden so the
    # CPU path runs everywhere.
    env = {**os.environ, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    done = run_script([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, (
        f"{script} --quick exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    assert "Traceback" not in done.stderr
    assert done.stdout.strip(), f"{script} --quick printed no figures"
