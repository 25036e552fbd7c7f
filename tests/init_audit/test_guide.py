"""Every Python block of docs/guides/init-audit.md runs as pasted (in the test's empty working directory), and the
example prints the findings the guide shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "init-audit.md"
_FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
BLOCKS = [m.group("code") for m in _FENCE.finditer(GUIDE.read_text()) if m.group("lang").strip() == "python"]
SHOWN = next(m.group("code") for m in _FENCE.finditer(GUIDE.read_text()) if m.group("lang").strip() == "text")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_of_the_guide_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(BLOCKS[index], f"{GUIDE.name}[{index}]", "exec"), {"__name__": "__guide__"})
    printed = capsys.readouterr().out
    if "audit(" in BLOCKS[index]:
        assert [line for line in printed.splitlines() if line] == SHOWN.strip().splitlines()
