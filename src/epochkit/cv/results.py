"""What a cross-validation produces: one :class:`FoldResult` per fold, the :class:`CVResult` over all of them
(aggregates, table, files, out-of-fold predictions) and :class:`FoldEnsemble`. No Trainer needed.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from epochkit._io import load_torch, write_csv_atomic, write_json_atomic
from epochkit.cv.reset import unwrap_compiled
from epochkit.cv.stats import summarize

__all__ = ["CVResult", "FoldEnsemble", "FoldResult", "best_of", "metric_mode"]

RESULTS_JSON = "cv_results.json"
RESULTS_CSV = "cv_results.csv"

# Whole words of a metric's name (split on anything but letters and digits) that mean "lower is better".
# Substrings misread names: `val_cancer_recall` holds "cer", `val_concern_acc` holds "err".
_MIN_WORDS = frozenset(
    {
        "loss",
        "losses",
        "err",
        "error",
        "errors",
        "mse",
        "mae",
        "rmse",
        "msle",
        "rmsle",
        "mape",
        "smape",
        "nll",
        "ppl",
        "perplexity",
        "wer",
        "cer",
        "ter",
        "fpr",
        "fnr",
        "far",
        "frr",
        "eer",
        "time",
        "seconds",
        "latency",
        "dist",
        "distance",
        "kl",
        "kld",
        "ce",
        "bce",
        "xent",
        "crossentropy",
        "hamming",
        "brier",
    }
)


def metric_mode(name: str, overrides: Mapping[str, str] | None = None) -> Literal["min", "max"]:
    """Whether lower (``"min"``) or higher (``"max"``) is better for a metric: ``overrides`` first, else ``"min"``
    when a whole word of the name (split on ``_``, ``/``, ``-``, ...) names a loss, error or distance (``loss``,
    ``mse``, ``mape``, ``kl``, ``bce``, ...), else ``"max"``. Give ``metric_modes`` for any other name.

    Example:
        >>> metric_mode("val_loss"), metric_mode("val_acc"), metric_mode("val_acc", {"val_acc": "min"})
        ('min', 'max', 'min')
        >>> metric_mode("val/smape"), metric_mode("val_cancer_recall")
        ('min', 'max')
    """
    if overrides and name in overrides:
        mode = overrides[name]
        if mode not in ("min", "max"):
            raise ValueError(f"metric mode for {name!r} must be 'min' or 'max', got {mode!r}.")
        return mode  # type: ignore[return-value]
    words = re.split(r"[^a-z0-9]+", name.lower())
    return "min" if _MIN_WORDS.intersection(words) else "max"


def best_of(
    history: Sequence[Mapping[str, Any]], overrides: Mapping[str, str] | None = None
) -> tuple[dict[str, float], dict[str, int]]:
    """Best value of every metric over per-epoch records ``{"epoch": e, "metrics": {...}}``, and its epoch.

    Example:
        >>> best_of([{"epoch": 0, "metrics": {"val_loss": 0.5}}, {"epoch": 1, "metrics": {"val_loss": 0.4}}])
        ({'val_loss': 0.4}, {'val_loss': 1})
    """
    best: dict[str, float] = {}
    epoch: dict[str, int] = {}
    for record in history:
        for name, value in record["metrics"].items():
            if value is None or math.isnan(value):
                continue
            better = min if metric_mode(name, overrides) == "min" else max
            if name not in best or better(value, best[name]) != best[name]:
                best[name], epoch[name] = float(value), int(record["epoch"])
    return best, epoch


Kind = Literal["last", "best", "kept"]
KINDS: tuple[Kind, ...] = ("last", "best", "kept")
_KIND_WORDS = {
    "last": "the last epoch's value",
    "best": "the best epoch's value",
    "kept": "the value of the model the fold kept, validated once after fit (after an EarlyStopping restore)",
}


@dataclass
class FoldResult:
    """One fold: sizes, every logged metric at its last epoch, at its best epoch and for the model the fold kept,
    files and timings (seconds).

    Attributes:
        last: Every metric of the last epoch trained.
        best: The best value of every metric over the epochs, and ``best_epoch`` where it was reached.
        kept: What validating the fold's final model once after fit gives: the model whose weights are in
            ``model_path`` and made the out-of-fold predictions, i.e. after an
            ``EarlyStopping(restore_best_weights=...)`` restore. Validation metrics only; empty without validation.
        kept_epoch: The epoch those weights come from: the epoch ``EarlyStopping`` restored, else the last one.
        worker: Where the fold ran: host and process id, and for a Ray task its node (``node_id``, ``node_ip``).
        manifest_identity: The identity (hash of fold plan and settings) of the cross-validation the fold belongs to.
        files: The SHA-256 of every file the fold's record points to, by path relative to ``root_dir``: a rerun
            reuses the fold only when they all match (:mod:`epochkit.cv.integrity`).
    """

    fold: int
    n_train: int
    n_val: int
    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)
    kept: dict[str, float] = field(default_factory=dict)
    kept_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model_path: str | None = None
    model_path: str | None = None
    weights_checksum: str | None = None
    resumed_from: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    manifest_identity: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoldResult:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "final" in data and "last" not in data:  # written before "final" was named for what it is
            values["last"] = data["final"]
        return cls(**values)


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


@dataclass
class CVResult:
    """All folds of one cross-validation.

    Per fold and metric there are three values (see :class:`FoldResult`): ``"last"`` (the last epoch), ``"best"``
    (the best epoch) and ``"kept"`` (the model the fold kept: its weights are saved, ensembled and made the
    out-of-fold predictions). Over the folds each gets its mean, sample standard deviation and the Student-t
    confidence interval of the mean (:func:`~epochkit.cv.stats.summarize`): ``mean +- t(0.975, K - 1) std /
    sqrt(K)`` for 95%, a normal-theory interval that can reach past the range of a bounded metric (an accuracy
    above 1) when folds disagree.

    Attributes:
        folds: One :class:`FoldResult` per fold run so far, by fold.
        root_dir: Where logs, checkpoints, the manifest and result files live.
        plan_hash: Hash of the folds (see the manifest).
        oof_index: Dataset indices that have an out-of-fold prediction, ascending (``arange(n)`` for K-fold).
        oof_predictions: ``predict_step`` outputs on validation folds, one row per ``oof_index`` entry (a tensor,
            or a tuple/list/dict of them), i.e. in the original dataset order. ``None`` when not computed.
        model: The model that was cross-validated (used by :meth:`ensemble`).

    Example:
        What :meth:`CrossValidator.fit <epochkit.cv.CrossValidator.fit>` returns, for two folds of the digits task:

        >>> import tempfile
        >>> from epochkit.cv import CrossValidator
        >>> from epochkit.demo import DigitsClassifier, DigitsDataModule
        >>> quick = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
        ...              logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...              enable_model_summary=False)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     cv = CrossValidator(n_splits=2, seed=0, root_dir=root, verbose=False)
        ...     result = cv.fit(DigitsClassifier(), DigitsDataModule(batch_size=64), trainer_kwargs=quick)
        ...     ensemble = result.ensemble()  # the fold models' average, from fold_k/model.pt
        >>> result.metrics
        ['train_loss', 'val_acc', 'val_loss']
        >>> accuracy = result.aggregate()["kept"]["val_acc"]
        >>> accuracy["mean"] == result.mean("val_acc") and accuracy["ci_low"] <= accuracy["mean"] <= accuracy["ci_high"]
        True
        >>> next(line for line in result.table().splitlines() if line.startswith("metric")).split()
        ['metric', 'fold', '0', 'fold', '1', 'mean', 'std', '95%', 'CI', '(t)']
        >>> result.oof_index.tolist() == list(range(1437)), tuple(result.oof_predictions.shape)  # every sample once
        (True, (1437, 10))
        >>> tuple(ensemble(torch.zeros(1, 64)).shape)
        (1, 10)
    """

    folds: list[FoldResult]
    root_dir: str
    plan_hash: str = ""
    n_splits: int = 0
    metric_modes: dict[str, str] = field(default_factory=dict)
    oof_index: np.ndarray | None = None
    oof_predictions: Any = None
    model: nn.Module | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------ aggregates
    @property
    def metrics(self) -> list[str]:
        """Every metric some fold logged, sorted."""
        return sorted({name for f in self.folds for name in (*f.last, *f.best, *f.kept)})

    def aggregate(self, confidence: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
        """``{"last" | "best" | "kept": {metric: {"mean", "std", "ci_low", "ci_high", "n"}}}`` over the folds;
        ``ci_low``/``ci_high`` bound the Student-t ``confidence`` interval of the mean."""
        out: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            for name in self.metrics:
                values = [getattr(f, kind).get(name, float("nan")) for f in self.folds]
                out[kind][name] = summarize(values, confidence)
        return out

    def mean(self, metric: str, kind: Kind = "kept") -> float:
        """Mean over folds of one metric: by default of the models the folds kept (``"last"``, ``"best"``: of
        their last and best epochs).

        Raises:
            KeyError: If no fold has that value (``"kept"`` holds validation metrics only: use ``kind="last"`` for
                a training metric).
        """
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
        summary = self.aggregate()[kind].get(metric)
        if summary is None or summary["n"] == 0:
            have = sorted({name for f in self.folds for name in getattr(f, kind)})
            raise KeyError(f"no fold has a {kind!r} value of {metric!r} ({_KIND_WORDS[kind]}); those are {have}.")
        return summary["mean"]

    def table(self, kind: Kind | Literal["all"] = "all") -> str:
        """A plain-text table: one row per metric and kind (``last``, ``best``, ``kept``), one column per fold,
        then the mean, the standard deviation and the Student-t 95% confidence interval of the mean."""
        kinds = list(KINDS) if kind == "all" else [kind]
        agg = self.aggregate()
        header = ["metric", *(f"fold {f.fold}" for f in self.folds), "mean", "std", "95% CI (t)"]
        rows = [header]
        for name in self.metrics:
            for k in kinds:
                s = agg[k][name]
                if s["n"] == 0:
                    continue
                label = name if kind != "all" else f"{name} ({k})"
                cells = [_fmt(getattr(f, k).get(name, float("nan"))) for f in self.folds]
                ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"
                rows.append([label, *cells, _fmt(s["mean"]), _fmt(s["std"]), ci])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return (
            f"{len(self.folds)}-fold cross-validation ({self.root_dir}): last = last epoch, best = best epoch, "
            f"kept = the model each fold kept\n{self.table()}"
        )

    # ------------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "root_dir": self.root_dir,
            "plan_hash": self.plan_hash,
            "n_splits": self.n_splits,
            "folds_done": [f.fold for f in self.folds],
            "metric_modes": self.metric_modes,
            "aggregate": self.aggregate(),
            "folds": [f.to_dict() for f in self.folds],
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per fold (``last/<metric>``, ``best/<metric>``, ``kept/<metric>``, ``kept_epoch``, timings), then
        rows ``mean``, ``std``, ``ci_low`` and ``ci_high`` (the Student-t 95% interval of the mean)."""
        rows: list[dict[str, Any]] = []
        for f in self.folds:
            row: dict[str, Any] = {"fold": f.fold, "n_train": f.n_train, "n_val": f.n_val}
            for kind in KINDS:
                for name in self.metrics:
                    row[f"{kind}/{name}"] = getattr(f, kind).get(name, "")
            row["kept_epoch"] = "" if f.kept_epoch is None else f.kept_epoch
            row.update({f"seconds/{k}": v for k, v in f.seconds.items()})
            row["best_model_path"] = f.best_model_path or ""
            rows.append(row)
        agg = self.aggregate()
        for stat in ("mean", "std", "ci_low", "ci_high"):
            row = {"fold": stat}
            for kind in KINDS:
                for name in self.metrics:
                    row[f"{kind}/{name}"] = agg[kind][name][stat]
            rows.append(row)
        return rows

    def save(self) -> None:
        """Write ``cv_results.json`` and ``cv_results.csv`` to ``root_dir``, atomically."""
        root = Path(self.root_dir)
        write_json_atomic(root / RESULTS_JSON, self.to_dict())
        write_csv_atomic(root / RESULTS_CSV, self.csv_rows())

    # ------------------------------------------------------------------------------------------- ensemble
    def ensemble(
        self,
        model: nn.Module | None = None,
        transform: Callable[[Any], Any] | None = None,
        weights: Literal["kept", "best", "final"] = "kept",
    ) -> FoldEnsemble:
        """A module whose ``forward`` averages the fold models' outputs, for test-time prediction.

        Args:
            model: A module of the cross-validated architecture to copy (default: the model given to ``fit``).
            transform: Applied to each fold model's output before averaging (e.g. ``lambda z: z.softmax(-1)``).
            weights: ``"kept"``: the weights each fold kept (``model.pt``; ``"final"`` is the former name);
                ``"best"``: the fold's best checkpoint (``ModelCheckpoint``), falling back to the kept weights where
                there is none.
        """
        if weights not in ("kept", "best", "final"):
            raise ValueError(f"`weights` must be 'kept' or 'best', got {weights!r}.")
        template = model if model is not None else self.model
        if template is None:
            raise ValueError("CVResult.ensemble() needs `model=`: this result holds no model (it was loaded).")
        members = []
        for f in self.folds:
            path = f.best_model_path if weights == "best" and f.best_model_path else f.model_path
            if not path or not Path(path).exists():
                raise FileNotFoundError(f"fold {f.fold} has no saved weights at {path!r}.")
            state = load_torch(path, "fold checkpoint")
            state = state.get("state_dict", state)
            member = copy.deepcopy(template)
            unwrap_compiled(member).load_state_dict(state)
            members.append(member.eval())
        return FoldEnsemble(members, transform).eval()


def _average(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        stacked = torch.stack([o.float() if not o.is_floating_point() else o for o in outputs])
        return stacked.mean(dim=0)
    if isinstance(first, Mapping):
        return {k: _average([o[k] for o in outputs]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_average(list(items)) for items in zip(*outputs, strict=True))
    if isinstance(first, int | float):
        return sum(outputs) / len(outputs)
    raise TypeError(f"cannot average fold outputs of type {type(first).__name__}")


class FoldEnsemble(nn.Module):
    """Averages the outputs of the fold models (tensors, or tuples/lists/dicts of tensors).

    Example:
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> ens = FoldEnsemble([a, b])
        >>> x = torch.ones(1, 2)
        >>> torch.allclose(ens(x), (a(x) + b(x)) / 2)
        True
    """

    def __init__(self, models: Sequence[nn.Module], transform: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("FoldEnsemble needs at least one model.")
        self.models = nn.ModuleList(models)
        self.transform = transform

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [m(*args, **kwargs) for m in self.models]
        if self.transform is not None:
            outputs = [self.transform(o) for o in outputs]
        return _average(outputs)
