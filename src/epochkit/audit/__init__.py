"""ShuffleAudit: which samples were seen, order metrics, verdicts, report."""

from epochkit.audit.callback import ShuffleAudit, ShuffleAuditError, ShuffleAuditWarning
from epochkit.audit.findings import CATALOG, EpochVerdict, Finding

__all__ = ["CATALOG", "EpochVerdict", "Finding", "ShuffleAudit", "ShuffleAuditError", "ShuffleAuditWarning"]
