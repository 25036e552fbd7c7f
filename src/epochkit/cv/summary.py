"""The TensorBoard summary run of a cross-validation: every fold's curve and the per-epoch mean and standard deviation
over folds (by epoch), a custom_scalars layout whose charts read only this run's tags, and an hparams table over
folds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from epochkit.cv.results import CVResult
from epochkit.cv.stats import summarize

__all__ = ["epoch_curves", "fold_tag", "layout", "write_summary_run"]


def epoch_curves(histories: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, dict[int, dict[str, float]]]:
    """``{metric: {epoch: summarize(values over the folds that logged it at that epoch)}}``.

    Example:
        >>> h0 = [{"epoch": 0, "metrics": {"val_loss": 1.0}}]
        >>> h1 = [{"epoch": 0, "metrics": {"val_loss": 3.0}}]
        >>> epoch_curves([h0, h1])["val_loss"][0]["mean"]
        2.0
    """
    values: dict[str, dict[int, list[float]]] = {}
    for history in histories:
        for record in history:
            for name, value in record["metrics"].items():
                values.setdefault(name, {}).setdefault(int(record["epoch"]), []).append(float(value))
    return {name: {e: summarize(v) for e, v in sorted(by_epoch.items())} for name, by_epoch in values.items()}


def fold_tag(name: str, fold: int) -> str:
    """The summary run's tag for one fold's curve of metric ``name``."""
    return f"cv/{name}/fold_{fold}"


def layout(metrics: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """A ``SummaryWriter.add_custom_scalars`` layout: per metric, every fold's curve on one chart and a margin chart
    of the mean between mean - std and mean + std (one standard deviation of the folds, not a confidence interval).

    A chart selects tags by regular expression in every run of the log directory; the patterns are anchored to the
    tags only the summary run writes (``cv/<metric>/fold_<k>``), so a run outside the cross-validation that logs a
    metric of the same name does not appear in them.

    Example:
        >>> layout(["val_loss"])["cross-validation"]["val_loss: every fold"]
        ['Multiline', ['^cv/val_loss/fold_[0-9]+$']]
    """
    charts: dict[str, list[Any]] = {}
    for name in metrics:
        charts[f"{name}: every fold"] = ["Multiline", [f"^cv/{re.escape(name)}/fold_[0-9]+$"]]
        charts[f"{name}: mean +- std over folds"] = [
            "Margin",
            [f"cv/{name}_mean", f"cv/{name}_mean_minus_std", f"cv/{name}_mean_plus_std"],
        ]
    return {"cross-validation": charts}


def _scalar_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hparams.items() if isinstance(v, bool | int | float | str)}


def write_summary_run(
    log_dir: str | Path,
    result: CVResult,
    histories: Sequence[Sequence[Mapping[str, Any]]],
    hparams: Mapping[str, Any] | None = None,
) -> None:
    """Write the summary run under ``log_dir`` (event files there are replaced), the hparams runs under
    ``log_dir/fold_k``. Every scalar is by epoch: each fold's curve (``cv/<metric>/fold_<k>``, from its history),
    ``cv/<metric>_mean``, ``_std``, ``_mean_minus_std`` and ``_mean_plus_std``; the hparams table has per fold the
    ``kept``, ``last`` and ``best`` value of every metric (``hparams/<metric>`` is the kept model's)."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    if log_dir.exists():
        for old in log_dir.rglob("events.out.tfevents.*"):
            old.unlink()
    curves = epoch_curves(histories)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for k, history in enumerate(histories):
            fold_id = result.folds[k].fold if k < len(result.folds) else k
            for record in history:
                for name, value in record["metrics"].items():
                    writer.add_scalar(fold_tag(name, fold_id), float(value), int(record["epoch"]))
        for name, by_epoch in sorted(curves.items()):
            for epoch, s in by_epoch.items():
                writer.add_scalar(f"cv/{name}_mean", s["mean"], epoch)
                std = 0.0 if math.isnan(s["std"]) else s["std"]
                writer.add_scalar(f"cv/{name}_std", s["std"], epoch)
                writer.add_scalar(f"cv/{name}_mean_minus_std", s["mean"] - std, epoch)
                writer.add_scalar(f"cv/{name}_mean_plus_std", s["mean"] + std, epoch)
        writer.add_custom_scalars(layout(sorted(curves)))
        writer.add_text("cv/table", "```\n" + result.table() + "\n```", 0)
        base = _scalar_hparams(hparams or {})
        for fold in result.folds:
            metric_dict = {f"hparams/{k}": v for k, v in fold.kept.items() if not math.isnan(v)}
            metric_dict.update({f"hparams/last_{k}": v for k, v in fold.last.items() if not math.isnan(v)})
            metric_dict.update({f"hparams/best_{k}": v for k, v in fold.best.items() if not math.isnan(v)})
            writer.add_hparams(
                {**base, "fold": fold.fold, "n_train": fold.n_train, "n_val": fold.n_val},
                metric_dict,
                run_name=f"fold_{fold.fold}",
            )
    finally:
        writer.close()
