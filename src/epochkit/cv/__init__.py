"""Cross-validation: :class:`CrossValidator` (in-process or on Ray with :class:`RayExecutor`), :class:`WeightReset`,
fold plans and results."""

from epochkit.cv.ray_executor import RayExecutor
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
    "RayExecutor",
    "WeightReset",
    "WeightResetError",
    "check_plan",
    "make_plan",
    "reinit_parameters",
    "weights_checksum",
]
