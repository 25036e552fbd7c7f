"""``tests/stopping/lightning_suite.py`` (the README's way to run Lightning's own EarlyStopping tests against
epochkit's class) on a clone-shaped directory made here: it runs the module with epochkit's class, fails loudly when
the import line moved, and writes nothing to the clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.stopping.lightning_suite import LIGHTNING_IMPORT

SCRIPT = Path(__file__).with_name("lightning_suite.py")

CHECK = """
def test_the_class_under_test_is_epochkits():
    assert EarlyStopping.__module__.startswith("epochkit."), EarlyStopping.__module__
    assert ModelCheckpoint.__module__.startswith("lightning.pytorch."), ModelCheckpoint.__module__
"""


def _clone(root: Path, module_text: str) -> Path:
    callbacks = root / "tests" / "tests_pytorch" / "callbacks"
    callbacks.mkdir(parents=True)
    (callbacks / "test_early_stopping.py").write_text(module_text)
    (root / "tests" / "tests_pytorch" / "helpers.py").write_text("HELPER = 1\n")
    return root


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_module_runs_against_epochkits_class_and_the_clone_is_untouched(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone", "import os\n" + LIGHTNING_IMPORT + CHECK)
    before = _files(clone)
    run = _run(str(clone), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
    assert _files(clone) == before


def test_a_moved_import_or_a_wrong_path_is_refused_with_exit_2(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone", "from lightning.pytorch.callbacks import EarlyStopping\n" + CHECK)
    run = _run(str(clone))
    assert run.returncode == 2
    assert "test_early_stopping.py: expected the line" in run.stderr and "found it 0 times" in run.stderr, run.stderr
    run = _run(str(tmp_path / "nowhere"))
    assert run.returncode == 2 and "not a pytorch-lightning clone" in run.stderr, run.stderr
    assert _run().returncode == 2
