"""ShuffleAudit: which samples were seen, order metrics, verdicts, report; SetEpoch, the fix it names for streams."""

from epochkit.audit.callback import ShuffleAudit, ShuffleAuditError, ShuffleAuditWarning
from epochkit.audit.digests import Comparison, compare
from epochkit.audit.findings import CATALOG, EpochVerdict, Finding
from epochkit.audit.set_epoch import SetEpoch

__all__ = [
    "CATALOG",
    "Comparison",
    "EpochVerdict",
    "Finding",
    "SetEpoch",
    "ShuffleAudit",
    "ShuffleAuditError",
    "ShuffleAuditWarning",
    "compare",
]
