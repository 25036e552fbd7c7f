"""``tests/stopping/lightning_suite.py`` (the README's way to run Lightning's own EarlyStopping tests against
epochkit's class) on a clone-shaped directory made here: it runs the module with epochkit's class, fails loudly when
the import line moved, and writes nothing to the clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.stopping.lightning_suite import LIGHTNING_IMPORT, REFUSED

SCRIPT = Path(__file__).with_name("lightning_suite.py")

CHECK = """
def test_the_class_under_test_is_epochkits():
    assert EarlyStopping.__module__.startswith("epochkit."), EarlyStopping.__module__
    assert ModelCheckpoint.__module__.startswith("lightning.pytorch."), ModelCheckpoint.__module__
"""


def _clone(root: Path, module_text: str) -> Path:
    """A clone's shape: the test module, a helper beside it and a pyproject.toml with one of Lightning's settings."""
    callbacks = root / "tests" / "tests_pytorch" / "callbacks"
    callbacks.mkdir(parents=True)
    (callbacks / "test_early_stopping.py").write_text(module_text)
    (root / "tests" / "tests_pytorch" / "helpers.py").write_text("HELPER = 1\n")
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\nfilterwarnings = ["error::FutureWarning"]\n')
    return root


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}  # the script's temporary copy, under tmp_path too
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240, env=env)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_module_runs_against_epochkits_class_and_the_clone_is_untouched(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone", "import os\n" + LIGHTNING_IMPORT + CHECK)
    before = _files(clone)
    run = _run(tmp_path, str(clone), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
    assert _files(clone) == before


def test_lightnings_pytest_settings_apply(tmp_path: Path) -> None:
    check = CHECK + "\ndef test_a_future_warning_fails():\n    import warnings\n    warnings.warn('x', FutureWarning)\n"
    clone = _clone(tmp_path / "clone", LIGHTNING_IMPORT + check)
    run = _run(tmp_path, str(clone), "-q")
    assert run.returncode == 1 and "1 failed, 1 passed" in run.stdout, run.stdout


def test_a_moved_import_or_a_wrong_path_is_refused_before_anything_runs(tmp_path: Path) -> None:
    clone = _clone(tmp_path / "clone", "from lightning.pytorch.callbacks import EarlyStopping\n" + CHECK)
    run = _run(tmp_path, str(clone))
    assert run.returncode == REFUSED
    assert "test_early_stopping.py: expected the line" in run.stderr and "found it 0 times" in run.stderr, run.stderr
    run = _run(tmp_path, str(tmp_path / "nowhere"))
    assert run.returncode == REFUSED and "not a pytorch-lightning clone" in run.stderr, run.stderr
    assert _run(tmp_path).returncode == REFUSED
