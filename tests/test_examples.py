"""Every example script runs as a user would run it, in a fresh process."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.processes import run_script

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def _run(script: Path, *args: str, cwd: Path, with_stderr: bool = False) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A script that starts a local Ray (examples/cv_ray.py): its session files in a short directory removed after
    # it (Ray's socket paths have a length limit), never a cluster of the environment's.
    ray_tmp = tempfile.mkdtemp(prefix="ekray-", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    env.pop("RAY_ADDRESS", None)
    try:
        proc = run_script(
            [sys.executable, str(script), "--root", str(cwd / "runs"), *args], cwd=cwd, env=env, timeout=240
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr if with_stderr else proc.stdout


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ has no script"


@pytest.mark.parametrize(
    "script",
    # cv_ray.py starts a local Ray: its processes make it a `processes` test (`make stress` loops it).
    [pytest.param(p, marks=pytest.mark.processes) if p.name == "cv_ray.py" else p for p in EXAMPLES],
    ids=lambda p: p.name,
)
def test_example_runs_fast(script: Path, tmp_path: Path) -> None:
    out = _run(script, "--fast", cwd=tmp_path)
    assert (tmp_path / "runs").is_dir(), f"{script.name} wrote no logs under --root"
    assert out.strip(), f"{script.name} printed nothing"
    if script.name == "shuffle_bug.py":
        _check_pictures(tmp_path / "runs" / "png")
    if script.name == "cv_ray.py":  # the folds ran in Ray worker processes, not in the script's
        assert re.search(r"mean validation accuracy of the 2 fold models: [0-9.]+ \(ran on .*pid \d+", out), out
        assert (tmp_path / "runs" / "cv_ray" / "cv_results.json").exists()


def _check_pictures(directory: Path) -> None:
    """The order and label maps the shuffle example saves (read back from its event files) are PNG plots (matplotlib
    is in the test extra), and the README's, committed under docs/images, are the same three."""
    from PIL import Image

    names = sorted(p.name for p in directory.glob("*.png"))
    assert names == ["label_map_fixed.png", "order_map_bug.png", "order_map_fixed.png"], names
    for name in names:
        with Image.open(directory / name) as image:
            assert image.format == "PNG" and image.size == (640, 480)
    committed = Path(__file__).resolve().parents[1] / "docs" / "images"
    assert sorted(p.name for p in committed.glob("*.png")) == names


def _demo_script() -> Path:
    """The script `make demo` runs, read from the Makefile so that this test follows it."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    match = re.search(r"^demo:.*\n\t\$\(BIN\)/python (examples/\S+\.py)", makefile, re.MULTILINE)
    assert match is not None, "the Makefile's demo target runs no example script"
    return Path(__file__).resolve().parents[1] / match.group(1)


# What `make demo` may print, stdout and stderr together: a header, Lightning's banner once (devices: 2 lines, a tip),
# a deprecation warning Lightning 2.6 raises under torch 2.13, per fold (5) the fold's line and EarlyStopping's
# restore line when it restored and ShuffleAudit's summary (Lightning's filter drops one identical to an earlier
# fold's), the table (a title, 2 header lines, 9 rows: 3 metrics x last/best/kept), where the
# results are and the mean accuracy; then the refit's: a line for each of the 2 callbacks it leaves out, Lightning's
# checkpoint tip and "`Trainer.fit` stopped" line, ShuffleAudit's summary and the final model. 38 lines with Lightning
# 2.6.6 and torch 2.13;
# a little room for a version that says one more thing, none for anything per epoch (there are about 140 epochs).
DEMO_MAX_LINES = 40


def test_demo_reaches_90_percent_validation_accuracy_and_prints_only_what_a_user_reads(tmp_path: Path) -> None:
    """What `make demo` promises: the full demo prints a mean validation accuracy of at least 0.9, a line per fold,
    the table and where the results are, and no per-epoch framework noise."""
    out = _run(_demo_script(), cwd=tmp_path, with_stderr=True)
    match = re.search(r"mean validation accuracy of the 5 fold models: ([0-9.]+)", out)
    assert match is not None, out
    assert float(match.group(1)) >= 0.9
    assert "tensorboard --logdir" in out and "cv_results.json" in out
    assert re.search(r"^metric +fold 0 +fold 1 +fold 2 +fold 3 +fold 4 +mean +std +95% CI \(t\)$", out, re.MULTILINE)
    assert (
        len(
            re.findall(
                r"^fold \d \(\d/5\): \d+ epochs, .*; kept (epoch \d+|the last epoch): val_acc", out, re.MULTILINE
            )
        )
        == 5
    )
    assert re.search(
        r"^final model: \d+ epochs \(median of the folds' kept epochs \d+, \d+, \d+, \d+, \d+\) on 1437 samples; "
        r"CV estimate val_acc 0\.\d{4} \[",
        out,
        re.MULTILINE,
    ), out
    lines = out.splitlines()
    assert len(lines) <= DEMO_MAX_LINES, f"`make demo` printed {len(lines)} lines (at most {DEMO_MAX_LINES}):\n{out}"
    assert not [line for line in lines if lines.count(line) > 1], out  # nothing repeated per fold or per epoch


def test_single_run_example_reaches_90_percent_validation_accuracy(tmp_path: Path) -> None:
    out = _run(EXAMPLES[0].with_name("digits.py"), cwd=tmp_path)
    match = re.search(r"final validation accuracy: ([0-9.]+)", out)
    assert match is not None, out
    assert float(match.group(1)) >= 0.9
