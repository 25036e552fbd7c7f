"""The installed package is what pyproject.toml promises."""

from __future__ import annotations

import importlib.metadata
import re
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
