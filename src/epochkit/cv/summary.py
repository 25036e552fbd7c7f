"""The TensorBoard summary run of a cross-validation: per-epoch mean/std over folds, a custom_scalars layout and an
hparams table over folds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from epochkit.cv.results import CVResult
from epochkit.cv.stats import summarize

__all__ = ["epoch_curves", "layout", "write_summary_run"]


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


def layout(metrics: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """A ``SummaryWriter.add_custom_scalars`` layout: per metric, every fold's curve on one chart (fold runs log
    the metric under its own name) and a margin chart of the mean with mean -+ std."""
    charts: dict[str, list[Any]] = {}
    for name in metrics:
        # Fold runs log the metric under its own name (x_epoch when it was also logged per step).
        charts[f"{name}: all folds"] = ["Multiline", [f"^{re.escape(name)}(_epoch)?$"]]
        charts[f"{name}: mean +- std"] = [
            "Margin",
            [f"cv/{name}_mean", f"cv/{name}_lower", f"cv/{name}_upper"],
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
    ``log_dir/fold_k``."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    if log_dir.exists():
        for old in log_dir.rglob("events.out.tfevents.*"):
            old.unlink()
    curves = epoch_curves(histories)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, by_epoch in sorted(curves.items()):
            for epoch, s in by_epoch.items():
                writer.add_scalar(f"cv/{name}_mean", s["mean"], epoch)
                std = 0.0 if math.isnan(s["std"]) else s["std"]
                writer.add_scalar(f"cv/{name}_std", s["std"], epoch)
                writer.add_scalar(f"cv/{name}_lower", s["mean"] - std, epoch)
                writer.add_scalar(f"cv/{name}_upper", s["mean"] + std, epoch)
        writer.add_custom_scalars(layout(sorted(curves)))
        writer.add_text("cv/table", "```\n" + result.table() + "\n```", 0)
        base = _scalar_hparams(hparams or {})
        for fold in result.folds:
            metric_dict = {f"hparams/{k}": v for k, v in fold.final.items() if not math.isnan(v)}
            metric_dict.update({f"hparams/best_{k}": v for k, v in fold.best.items() if not math.isnan(v)})
            writer.add_hparams(
                {**base, "fold": fold.fold, "n_train": fold.n_train, "n_val": fold.n_val},
                metric_dict,
                run_name=f"fold_{fold.fold}",
            )
    finally:
        writer.close()
