"""The installed package is what pyproject.toml promises."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import epochkit

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_pyproject() -> None:
    # tomllib is 3.11+; the project line is simple enough to read on 3.10 too.
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match is not None
    assert epochkit.__version__ == match.group(1)
    assert importlib.metadata.version("epochkit") == epochkit.__version__


def test_public_api_names_exist() -> None:
    for name in epochkit.__all__:
        assert hasattr(epochkit, name), f"epochkit.__all__ names {name!r}, which the package does not define"


def test_package_is_typed() -> None:
    assert (Path(epochkit.__file__).parent / "py.typed").is_file()


def test_the_sdist_holds_the_package_its_tests_examples_benchmarks_and_docs_only(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = tmp_path.glob("epochkit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [name.split("/", 1)[1] for name in tar.getnames() if "/" in name]
    allowed = ("src/epochkit/", "tests/", "examples/", "benchmarks/", "docs/")
    top = {"README.md", "CHANGELOG.md", "CONTRIBUTING.md", "LICENSE", "pyproject.toml", "PKG-INFO", ".gitignore"}
    top |= {"mkdocs.yml"}  # the documentation site's configuration, beside docs/
    stray = [n for n in names if not n.startswith(allowed) and n not in top]
    assert not stray, stray
    assert not [n for n in names if n.endswith((".ckpt", ".pyc")) or "lightning_logs" in n]
    assert "src/epochkit/__init__.py" in names and "tests/conftest.py" in names and "mkdocs.yml" in names


def test_warmup_schedules_stays_importable_as_a_re_export_of_epochkit_schedules() -> None:
    import epochkit.warmup.schedules as old_path
    from epochkit import schedules

    assert old_path.__all__ == schedules.__all__
    assert all(getattr(old_path, name) is getattr(schedules, name) for name in schedules.__all__)
