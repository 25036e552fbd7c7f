"""InitAudit: symmetric (identical) units and dead ReLU units at the start of training; pure detection functions in
:mod:`.symmetry` and :mod:`.dead`, the callback in :mod:`.callback`."""

from epochkit.init_audit.callback import InitAudit, InitAuditError, InitAuditWarning
from epochkit.init_audit.findings import CATALOG, Finding
from epochkit.init_audit.symmetry import LayerGroups, find_identical_units, still_identical

__all__ = [
    "CATALOG",
    "Finding",
    "InitAudit",
    "InitAuditError",
    "InitAuditWarning",
    "LayerGroups",
    "find_identical_units",
    "still_identical",
]
