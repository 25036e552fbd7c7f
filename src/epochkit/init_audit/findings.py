"""What the initialisation audit found, in the shape of the shuffle audit's findings (code, evidence, fix), and its
report and summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Every finding: code -> (what it means, the usual fix, its severity).
CATALOG: dict[str, tuple[str, str, str]] = {
    "symmetric_units": (
        "units of a layer started identical and are still identical: they get identical gradients, so the layer "
        "works as fewer units",
        "initialise the layer's weights randomly (e.g. nn.init.kaiming_uniform_(layer.weight, a=5**0.5), what "
        "torch's own reset_parameters does), or remove the constant/zero init (nn.init.zeros_, constant_, fill_) "
        "of this layer and of the layer after it",
        "issue",
    ),
    "symmetric_init": (
        "units of a layer started identical but their gradients are differentiating them (a zero-initialised "
        "output layer or residual branch, by design)",
        "nothing, if the identical start is intended",
        "notice",
    ),
    "dead_layer": (
        "no unit of a ReLU layer activated on any sample of the first epoch: the layer passes no signal and no "
        "gradient",
        "initialise the layer's weights randomly and its bias at zero or slightly positive (not negative), "
        "lower the learning rate, or use LeakyReLU/GELU",
        "issue",
    ),
    "dead_units": (
        "some units of a ReLU layer never activated on any sample of the first epoch",
        "a few dead units are common; many: check the layer's init and bias, and the learning rate",
        "notice",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One thing the initialisation audit found.

    Attributes:
        code: A key of :data:`CATALOG` (its *kind*).
        layer: The layer's module path (``net.0``).
        evidence: What was measured, e.g. ``"64 of 64 units in 1 group identical at step 0 and at step 10"``.
        step: The optimizer step it was judged at.
        severity: ``"issue"`` (acted on by ``on_issue``) or ``"notice"`` (logged only).

    Example:
        >>> f = Finding("symmetric_units", "net.0", "64 of 64 units in 1 group identical at steps 0 and 10", 10)
        >>> print(f.message())  # doctest: +ELLIPSIS
        InitAudit step 10: symmetric_units in 'net.0' (units of a layer started identical ...): 64 of 64 units ...
        >>> f.severity
        'issue'
    """

    code: str
    layer: str
    evidence: str
    step: int
    severity: str = ""

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", CATALOG[self.code][2])

    @property
    def kind(self) -> str:
        """The finding's kind: its :attr:`code`."""
        return self.code

    @property
    def title(self) -> str:
        """What the finding means."""
        return CATALOG[self.code][0]

    @property
    def fix(self) -> str:
        """The usual fix."""
        return CATALOG[self.code][1]

    def message(self) -> str:
        """One line naming the finding, the layer, the evidence and the fix."""
        where = f"InitAudit step {self.step}: {self.code} in {self.layer!r}"
        return f"{where} ({self.title}): {self.evidence}. Fix: {self.fix}."

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints and JSON."""
        return {
            "code": self.code,
            "layer": self.layer,
            "evidence": self.evidence,
            "step": self.step,
            "severity": self.severity,
            "title": self.title,
            "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(data["code"], data["layer"], data["evidence"], int(data["step"]), data.get("severity", ""))


def markdown_report(findings: list[Finding], notes: list[str]) -> str:
    """A short Markdown report for TensorBoard's text tab.

    Example:
        >>> print(markdown_report([Finding("dead_layer", "net.2", "0 of 32 units ever positive", 4)], []))
        ... # doctest: +ELLIPSIS
        **Init audit: 1 issue**
        <BLANKLINE>
        - **dead_layer** in `net.2` (step 4): no unit of a ReLU layer activated ... *Fix:* initialise ...
    """
    issues = sum(f.severity == "issue" for f in findings)
    head = f"**Init audit: {issues} issue{'s' if issues != 1 else ''}**" if issues else "**Init audit: ok**"
    lines = [head, ""]
    for f in findings:
        tag = "" if f.severity == "issue" else " (notice)"
        lines.append(f"- **{f.code}**{tag} in `{f.layer}` (step {f.step}): {f.title}. {f.evidence}. *Fix:* {f.fix}.")
    lines.extend(f"- note: {note}" for note in notes)
    return "\n".join(lines).rstrip()


def summary(findings: list[Finding], layers: int, steps: int | None) -> str:
    """The one console line at the end of the check.

    Example:
        >>> summary([], 3, 10)
        'InitAudit: 3 layers checked at steps 0 and 10: no issue.'
        >>> found = [Finding("symmetric_units", "net.0", "...", 10), Finding("dead_units", "net.2", "...", 8)]
        >>> print(summary(found, 3, 10))  # doctest: +ELLIPSIS
        InitAudit: 3 layers checked at steps 0 and 10: 1 issue: symmetric_units in 'net.0'; notices: dead_units ...
    """
    when = f"at steps 0 and {steps}" if steps is not None else "(symmetry not judged)"
    head = f"InitAudit: {layers} layer{'s' if layers != 1 else ''} checked {when}"
    issues = [f"{f.code} in {f.layer!r}" for f in findings if f.severity == "issue"]
    notices = [f"{f.code} in {f.layer!r}" for f in findings if f.severity != "issue"]
    noted = f"; notices: {', '.join(notices)}" if notices else ""
    if not issues:
        return f"{head}: no issue{noted}."
    return f"{head}: {len(issues)} issue{'s' if len(issues) != 1 else ''}: {', '.join(issues)}{noted}."
