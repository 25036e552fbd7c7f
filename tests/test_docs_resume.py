"""Every Python block of docs/guides/resume.md runs as pasted (in this process, in the test's empty directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "resume.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.MULTILINE | re.DOTALL)


def test_the_guide_has_its_examples() -> None:
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_guide_block_runs_as_pasted(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, str(GUIDE), "exec"), {"__name__": "__guide__"})
    assert "resume drill (interrupted after global step 16" in capsys.readouterr().out
