"""Lightning's own EarlyStopping tests, run against ``epochkit.EarlyStopping`` with only the import changed.

    git clone --depth 1 --branch 2.6.5 https://github.com/Lightning-AI/pytorch-lightning /tmp/pytorch-lightning
    .venv/bin/python tests/stopping/lightning_suite.py /tmp/pytorch-lightning [pytest arguments]

Take the tag nearest the installed Lightning (2.6.5's test helpers import nothing 2.6.6 lacks; the EarlyStopping test
module has not changed since 2.6.0), and the interpreter that has epochkit and its test extras, plus ``cloudpickle``
(scikit-learn's joblib brings it in here; else ``pip install cloudpickle``). Nothing is written to the clone:
``tests/tests_pytorch`` and the clone's ``pyproject.toml`` (Lightning's pytest settings: ``FutureWarning`` is an
error, ``xfail_strict``) are copied to a temporary directory, where ``callbacks/test_early_stopping.py`` gets one
changed line (``EarlyStopping`` from ``epochkit`` instead of ``lightning.pytorch.callbacks``) and runs under pytest,
with the temporary directory as its working directory (give output paths such as ``--junitxml`` absolute).

Exit status: pytest's (0: none failed; the summary says how many passed, 53 with Lightning 2.6.6), or 64 without
running anything when the path is not a clone, the import line is not there exactly once (a Lightning release that
moved it needs a look, not a silent pass), or this interpreter lacks pytest, epochkit or cloudpickle.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REFUSED = 64  # not pytest's: pytest uses 0-5
NEEDED = ("pytest", "epochkit", "cloudpickle")
MODULE = Path("tests_pytorch") / "callbacks" / "test_early_stopping.py"
LIGHTNING_IMPORT = "from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint\n"
EPOCHKIT_IMPORT = "from lightning.pytorch.callbacks import ModelCheckpoint\nfrom epochkit import EarlyStopping\n"


def with_epochkit(source: str, where: str) -> str:
    """``source`` with Lightning's EarlyStopping import replaced by epochkit's; ``ValueError`` naming ``where`` when
    the line is not there exactly once.

    >>> with_epochkit("import os\\n" + LIGHTNING_IMPORT, "m.py").splitlines()[1:]
    ['from lightning.pytorch.callbacks import ModelCheckpoint', 'from epochkit import EarlyStopping']
    """
    lines = source.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line == LIGHTNING_IMPORT]
    if len(found) != 1:
        line = LIGHTNING_IMPORT.strip()
        raise ValueError(f"{where}: expected the line {line!r} exactly once, found it {len(found)} times")
    lines[found[0]] = EPOCHKIT_IMPORT
    return "".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else REFUSED
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"{sys.executable} cannot import {', '.join(missing)}: run this with epochkit's .venv", file=sys.stderr)
        return REFUSED
    clone = Path(argv[0]).resolve()
    tests, module = clone / "tests" / "tests_pytorch", clone / "tests" / MODULE
    if not module.is_file():
        print(f"{clone}: not a pytorch-lightning clone (no tests/{MODULE})", file=sys.stderr)
        return REFUSED
    try:
        changed = with_epochkit(module.read_text(), str(module))
    except ValueError as error:
        print(error, file=sys.stderr)
        return REFUSED
    with tempfile.TemporaryDirectory(prefix="epochkit-lightning-") as temp:
        shutil.copytree(tests, Path(temp) / "tests_pytorch")
        if (clone / "pyproject.toml").is_file():
            shutil.copy(clone / "pyproject.toml", Path(temp) / "pyproject.toml")
        (Path(temp) / MODULE).write_text(changed)
        plugins = ["-p", "no:cacheprovider", "-p", "no:randomly"]
        command = [sys.executable, "-m", "pytest", *plugins, str(MODULE), *argv[1:]]
        print("running", " ".join(command), "in a copy of", tests, flush=True)
        return subprocess.run(command, cwd=temp, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
