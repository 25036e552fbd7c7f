"""epochkit: Lightning callbacks for the epoch loop.

Shuffle audit, initialisation audit, early stopping, learning-rate warmup and cross-validation that plug into any
LightningModule on one CPU, one GPU or many (DDP).
"""

from epochkit import schedules
from epochkit._distributed import DestroyProcessGroupAtExit
from epochkit.audit import SetEpoch, ShuffleAudit, ShuffleAuditError, ShuffleAuditWarning
from epochkit.cv import CrossValidator, CVResult, WeightReset
from epochkit.init_audit import InitAudit, InitAuditError, InitAuditWarning
from epochkit.stopping import EarlyStopping
from epochkit.warmup import LRWarmup

__version__ = "0.1.0.dev0"

__all__ = [
    "CVResult",
    "CrossValidator",
    "DestroyProcessGroupAtExit",
    "EarlyStopping",
    "InitAudit",
    "InitAuditError",
    "InitAuditWarning",
    "LRWarmup",
    "SetEpoch",
    "ShuffleAudit",
    "ShuffleAuditError",
    "ShuffleAuditWarning",
    "WeightReset",
    "__version__",
    "schedules",
]
