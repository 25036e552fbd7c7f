"""A griffe extension for the API reference: epochkit's docstrings title their doctests ``Example:``, which griffe's
Google parser reads as an admonition (its examples section is ``Examples:``); this makes them examples sections, so
that mkdocstrings renders the doctests as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename a docstring's ``Example:`` section to ``Examples:`` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub("Examples:", obj.docstring.value)
