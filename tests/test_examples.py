"""Every example script runs as a user would run it, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def _run(script: Path, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--root", str(cwd / "runs"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ has no script"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_fast(script: Path, tmp_path: Path) -> None:
    out = _run(script, "--fast", cwd=tmp_path)
    assert (tmp_path / "runs").is_dir(), f"{script.name} wrote no logs under --root"
    assert out.strip(), f"{script.name} printed nothing"


def test_demo_reaches_90_percent_validation_accuracy(tmp_path: Path) -> None:
    """What `make demo` promises: the full digits run prints a validation accuracy of at least 0.9."""
    out = _run(EXAMPLES[0].with_name("digits.py"), cwd=tmp_path)
    match = re.search(r"final validation accuracy: ([0-9.]+)", out)
    assert match is not None, out
    assert float(match.group(1)) >= 0.9
