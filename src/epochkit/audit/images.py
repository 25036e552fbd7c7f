"""Pictures of an epoch, rendered with numpy into RGB images for TensorBoard (no plotting library).

* The *order map* is a 2-D histogram of each sample's position this epoch (y, bottom to top) against the previous
  epoch (x, left to right), over the samples both epochs saw: a fresh shuffle is even noise, a replay the diagonal, a
  rotation two parallel lines, a block shuffle a grid of tiles and a small shuffle buffer a thick diagonal.
* The *label map* has the epoch's batches along x (binned into at most 128 columns) and the classes along y; each
  cell is the class's share of those batches: a shuffle is even noise in horizontal bands (one per class, by its
  frequency), sorted data a staircase, class-blocked batches isolated bright cells.

Colours follow the viridis ramp (dark blue for none, yellow for the most); every raw image is at most 256 x 256
pixels. With matplotlib (the ``plot`` extra) :func:`plot_order_map` and :func:`plot_label_map` draw the same data as
readable plots: axes saying what they are, a colour legend, a title with the epoch and the verdict, and a line saying
what a healthy and a broken picture look like.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from epochkit.audit.functional import _code_space, _displacement, _positions, _shared_samples, order_map_bins

#: Longest side of an image, in pixels.
SIZE = 256
#: Viridis anchors (at 0, 0.25, 0.5, 0.75 and 1), linearly interpolated.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; nan as 0) to viridis RGB, ``uint8`` with a trailing channel axis.

    Example:
        >>> colorize(np.array([[0.0, 1.0]])).tolist()
        [[[68, 1, 84], [253, 231, 37]]]
    """
    t = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(_RAMP) - 2)
    frac = (t - low)[..., None]
    rgb = _RAMP[low] * (1.0 - frac) + _RAMP[low + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def _upscale(rgb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Repeat each cell into a block of ``rows x cols`` pixels (nearest neighbour)."""
    return np.repeat(np.repeat(rgb, rows, axis=0), cols, axis=1)


#: Bins per axis of the order map for ``n`` shared samples (see :func:`~epochkit.audit.functional.order_map_bins`).
order_bins = order_map_bins


def order_map(prev_ids: np.ndarray, cur_ids: np.ndarray, bins: int | None = None) -> np.ndarray:
    """The 2-D histogram of the shared samples' rank this epoch (rows, first row = start of the epoch) against the
    previous epoch (columns), as counts over the count a fresh shuffle expects per bin (1 on average); the callback
    takes it from :func:`~epochkit.audit.functional.order_stats` (``order_map=True``), which has the ranks already.

    Example:
        >>> ids = np.arange(64)
        >>> m = order_map(ids, ids, bins=8)
        >>> m.shape, float(m.trace()), float(m.sum())
        ((8, 8), 64.0, 64.0)
    """
    (prev_c, cur_c), size = _code_space([np.asarray(prev_ids), np.asarray(cur_ids)])
    prev_at = _positions(prev_c, size)[cur_c] if size else np.empty(0, np.int64)
    shared = _shared_samples(prev_at=prev_at, cur_codes=cur_c, prev_count=prev_c.size)
    n = shared.size
    bins = order_bins(n) if bins is None else int(bins)
    if n == 0:
        return np.zeros((bins, bins))
    counts = _displacement(shared.rank_prev, bins=bins).histogram
    assert counts is not None
    return counts * (bins * bins / n)


def render_order_map(ratios: np.ndarray) -> np.ndarray:
    """An order map (:func:`order_map`) as an RGB image, epoch start at the bottom left: ``log(1 + r) / log(1 +
    bins)`` so that a fresh shuffle's bins (r near 1) are dim and a replay's diagonal (r = bins) is the brightest.

    Example:
        >>> img = render_order_map(order_map(np.arange(64), np.arange(64), bins=8))
        >>> img.shape, img.dtype.name, img[-1, 0].tolist(), img[0, 0].tolist()  # diagonal: bottom left is bright
        ((256, 256, 3), 'uint8', [253, 231, 37], [68, 1, 84])
    """
    bins = ratios.shape[0]
    scaled = np.log1p(np.maximum(ratios, 0.0)) / math.log1p(bins)
    pixels = max(1, SIZE // bins)
    return _upscale(colorize(scaled[::-1]), pixels, pixels)


def merge_label_tables(tables: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Sum per-rank label tables (``columns x classes``; batch k of every rank is the effective batch k), padding
    the class axis to the widest.

    Example:
        >>> merge_label_tables([np.array([[1, 0]]), np.array([[0, 1, 2]]), None]).tolist()
        [[1, 1, 2]]
    """
    present = [t for t in tables if t is not None and t.size]
    if not present:
        return None
    rows = max(t.shape[0] for t in present)
    classes = max(t.shape[1] for t in present)
    out = np.zeros((rows, classes), np.int64)
    for t in present:
        out[: t.shape[0], : t.shape[1]] += t
    return out


def label_map(table: np.ndarray, max_rows: int = 64) -> np.ndarray:
    """Each class's share of each column of batches: ``classes x columns`` (rows are class groups when there are
    more than ``max_rows`` classes).

    Example:
        >>> label_map(np.array([[2, 2], [4, 0]])).tolist()
        [[0.5, 1.0], [0.5, 0.0]]
    """
    table = np.asarray(table, np.float64)
    classes = table.shape[1]
    if classes > max_rows:
        groups = np.arange(classes) * max_rows // classes
        table = np.stack([table[:, groups == g].sum(axis=1) for g in range(max_rows)], axis=1)
    totals = table.sum(axis=1, keepdims=True)
    share = np.divide(table, totals, out=np.zeros_like(table), where=totals > 0)
    return share.T


def render_label_map(shares: np.ndarray) -> np.ndarray:
    """A label map (:func:`label_map`) as an RGB image, class 0 at the top, batches left to right; colour
    ``sqrt(share)``, so that the ~1/K shares of K classes in a shuffled batch still show while a one-class batch is
    the brightest.

    Example:
        >>> img = render_label_map(label_map(np.array([[8, 0], [0, 8]])))
        >>> img.shape, img[0, 0].tolist(), img[0, -1].tolist()
        ((256, 256, 3), [253, 231, 37], [68, 1, 84])
    """
    rows, cols = shares.shape
    return _upscale(colorize(np.sqrt(np.clip(shares, 0.0, 1.0))), max(1, SIZE // rows), max(1, SIZE // cols))


# ----------------------------------------------------------------------------------------------- plots (matplotlib)

#: Size of a plotted image, in pixels (width, height).
PLOT_SIZE = (640, 480)


def can_plot() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra), without importing it."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out entry in sys.modules
        return False


def _title(what: str, epoch: int, loader: str | None, verdict: str) -> str:
    where = f" of loader {loader!r}" if loader is not None else ""
    return f"{what}{where}, epoch {epoch}\n{verdict}"


def _render(draw: Any) -> np.ndarray:
    """Draw on a bare matplotlib ``Figure`` (no pyplot: the user's backend and open figures are left alone) and
    return its pixels as an RGB ``uint8`` array of :data:`PLOT_SIZE`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    # Fixed axes positions (see _axes): a layout engine would cost more than the drawing itself at every epoch.
    fig = Figure(figsize=(PLOT_SIZE[0] / dpi, PLOT_SIZE[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    draw(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _axes(fig: Any) -> tuple[Any, Any]:
    """The plot's axes and its colour bar's, placed for :data:`PLOT_SIZE` (title above, note below)."""
    return fig.add_axes((0.1, 0.22, 0.68, 0.66)), fig.add_axes((0.81, 0.22, 0.025, 0.66))


def _note(ax: Any, text: str) -> None:
    """What a healthy and a broken picture look like, in small grey type at the bottom of the figure."""
    ax.figure.text(0.5, 0.015, text, ha="center", va="bottom", fontsize=8, color="dimgray")


def plot_order_map(
    ratios: np.ndarray, epoch: int, previous_epoch: int | None, verdict: str, loader: str | None = None
) -> np.ndarray:
    """An order map (:func:`order_map`) as a readable plot (needs matplotlib): each sample's position in ``epoch``
    (y) against ``previous_epoch`` (x), in percent of the epoch, coloured by samples per cell over what a fresh
    shuffle puts there (square-root scale); ``verdict`` is the title's second line.

    Example:
        >>> img = plot_order_map(order_map(np.arange(64), np.arange(64), bins=8), 1, 0, "order_unchanged (issue)")
        >>> img.shape, img.dtype.name
        ((480, 640, 3), 'uint8')
    """
    from matplotlib.colors import PowerNorm

    bins = ratios.shape[0]
    before = f"epoch {previous_epoch}" if previous_epoch is not None else "the previous epoch"

    def draw(fig: Any) -> None:
        ax, cax = _axes(fig)
        shown = ax.imshow(
            np.maximum(ratios, 0.0),
            origin="lower",
            aspect="auto",
            extent=(0, 100, 0, 100),
            cmap="viridis",
            norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(bins), 1.0)),
            interpolation="nearest",
        )
        ax.set_xlabel(f"position of the sample in {before} (% of the epoch)")
        ax.set_ylabel(f"position in epoch {epoch} (% of the epoch)")
        ax.set_title(_title("ShuffleAudit order map", epoch, loader, verdict), fontsize=11)
        bar = fig.colorbar(shown, cax=cax)
        bar.set_label(f"samples per cell / a fresh shuffle's ({bins} x {bins} cells)", fontsize=9)
        _note(
            ax,
            "even noise: a fresh shuffle | diagonal: the same order again | parallel lines: a rotation\n"
            "thick diagonal: a small shuffle buffer | tiles: blocks (shards, chunks) shuffled, not samples",
        )

    return _render(draw)


def plot_label_map(
    shares: np.ndarray, epoch: int, verdict: str, loader: str | None = None, classes: int | None = None
) -> np.ndarray:
    """A label map (:func:`label_map`) as a readable plot (needs matplotlib): the epoch's batches in order along x
    (in percent of the epoch), the classes along y (class groups when ``classes`` is more than the rows), coloured by
    the class's share of those batches' samples (square-root scale); ``verdict`` is the title's second line.

    Example:
        >>> img = plot_label_map(label_map(np.array([[8, 0], [0, 8]])), 0, "sorted_labels (issue)")
        >>> img.shape, img.dtype.name
        ((480, 640, 3), 'uint8')
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import MaxNLocator

    rows = shares.shape[0]
    grouped = classes is not None and classes > rows

    def draw(fig: Any) -> None:
        ax, cax = _axes(fig)
        shown = ax.imshow(
            np.clip(shares, 0.0, 1.0),
            origin="upper",
            aspect="auto",
            extent=(0, 100, rows - 0.5, -0.5),
            cmap="viridis",
            norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
            interpolation="nearest",
        )
        ax.set_xlabel(f"batches of epoch {epoch}, in the order trained (% of the epoch)")
        ax.set_ylabel(f"class group (of {classes} classes)" if grouped else "class")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=min(rows, 16), integer=True))
        ax.set_title(_title("ShuffleAudit label map", epoch, loader, verdict), fontsize=11)
        bar = fig.colorbar(shown, cax=cax)
        bar.set_label("share of the batches' samples", fontsize=9)
        _note(
            ax,
            "even bands (one per class, by its frequency): shuffled | staircase: sorted by label\n"
            "isolated bright cells: batches of one class",
        )

    return _render(draw)
