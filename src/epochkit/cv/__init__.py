"""Cross-validation: :class:`CrossValidator`, :class:`WeightReset`, fold plans and results."""

from epochkit.cv.reset import WeightReset, WeightResetError, reinit_parameters, weights_checksum
from epochkit.cv.results import CVResult, FoldEnsemble, FoldResult
from epochkit.cv.splits import FoldPlan, check_plan, make_plan
from epochkit.cv.validator import CrossValidator

__all__ = [
    "CVResult",
    "CrossValidator",
    "FoldEnsemble",
    "FoldPlan",
    "FoldResult",
    "WeightReset",
    "WeightResetError",
    "check_plan",
    "make_plan",
    "reinit_parameters",
    "weights_checksum",
]
