"""A griffe extension for the API reference: epochkit's docstrings carry a little Sphinx markup that MkDocs would show
raw, rewritten here into Markdown before griffe parses them.

- ``Example:`` titles the doctests; griffe's Google parser reads that as an admonition (its examples section is
  ``Examples:``), so the doctests would not render as code.
- ``.. math::`` formulas (LaTeX, continued on indented lines) become a LaTeX code block: the site loads no script from
  another host, so there is no MathJax to typeset them, and Markdown would otherwise read their ``_`` as emphasis.
- Sphinx roles (``:class:`X```, ``:func:`~a.b```, ...) become inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^Example:[ \t]*$", re.MULTILINE)
# ".. math:: first line" and its indented continuation lines, up to a blank line or the end.
_MATH = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n(?P<rest>(?:(?P=indent)[ \t]+\S.*\n?)*)", re.MULTILINE
)
_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|data|meth|attr|exc|obj):`~?(?P<target>[^`]+)`")


def _math(match: re.Match[str]) -> str:
    indent = match.group("indent")
    lines = [match.group("first").strip(), *(line.strip() for line in match.group("rest").splitlines())]
    body = "\n".join(f"{indent}{line}" for line in lines if line)
    return f"{indent}```latex\n{body}\n{indent}```\n"


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its Sphinx markup rewritten as Markdown (see the module's docstring).

    Example:
        >>> print(to_markdown(".. math:: a_1 +\\n          b_2\\n\\nSee :func:`~epochkit.schedules.preview`."))
        ```latex
        a_1 +
        b_2
        ```
        <BLANKLINE>
        See `epochkit.schedules.preview`.
    """
    text = _MATH.sub(_math, text)
    text = _ROLE.sub(lambda m: f"`{m.group('target')}`", text)
    return _EXAMPLE.sub("Examples:", text)


class DocstringMarkup(griffe.Extension):
    """Rewrite every docstring's Sphinx markup as Markdown before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
