"""Read run folders back and show them: a per-epoch metrics table and training-curve PNGs.

Used by ``lakd report RUN_DIR`` and by ``lakd bench`` / ``lakd demo`` for their plots. Everything here only
reads what the trainer wrote (metrics.jsonl, summary.json, run.json); nothing is recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakd.atomic import atomic_write, read_json
from lakd.errors import LakdError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class RunRecord:
    """One finished or unfinished run folder, as the trainer left it."""

    path: Path
    epochs: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.summary is not None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a torn last line (run killed mid-write) is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_run(path: str | Path) -> RunRecord:
    """Load a run folder written by ``lakd train`` / ``lakd distill``; a folder without metrics is an error."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not path.is_dir():
        raise LakdError(f"run folder '{path}' does not exist")
    if not metrics.is_file():
        raise LakdError(f"'{path}' is not a run folder: it has no metrics.jsonl (written after each epoch by "
                        "`lakd train` / `lakd distill`)")
    summary = read_json(path / "summary.json", "run summary") if (path / "summary.json").is_file() else None
    run = read_json(path / "run.json", "run record") if (path / "run.json").is_file() else {}
    return RunRecord(path, read_jsonl(metrics), summary, run)


def loss_terms(epochs: list[dict[str, Any]]) -> list[str]:
    """The per-term training losses recorded (train_<name>), in first-seen order, without the total."""
    names: list[str] = []
    for row in epochs:
        for key in row:
            if key.startswith("train_") and key not in ("train_loss", "train_top1", "train_time_s") \
                    and key not in names:
                names.append(key)
    return names


def metrics_table(record: RunRecord) -> str:
    """A fixed-width per-epoch table: losses, accuracies, lr, speed, memory."""
    cols = [("epoch", "{:>5}"), ("train_loss", "{:>10.4f}"), ("train_top1", "{:>10.2f}"), ("val_top1", "{:>8.2f}"),
            ("test_top1", "{:>9.2f}"), ("lr", "{:>8.4f}"), ("img_per_s", "{:>9.0f}"), ("peak_mem_mb", "{:>11.0f}")]
    cols = [(name, fmt) for name, fmt in cols if any(name in row for row in record.epochs)]
    lines = [" ".join(f"{name:>{len(fmt.format(0))}}" for name, fmt in cols)]
    for row in record.epochs:
        cells = []
        for name, fmt in cols:
            width = len(fmt.format(0))
            value = row.get(name)
            cells.append(fmt.format(value) if isinstance(value, (int, float)) else f"{'-':>{width}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def summary_line(record: RunRecord) -> str:
    """One line: last and best-on-val test top-1, speed, memory, wall time (or how far an unfinished run got)."""
    s = record.summary
    if s is None:
        done = record.epochs[-1]["epoch"] if record.epochs else 0
        return f"{record.path}: unfinished, {done} epoch(s) recorded"
    best = f"best-val epoch {s.get('best_epoch')} (test {s.get('best_test_top1', float('nan')):.2f})"
    return (f"{record.path}: last test {s.get('last_test_top1', float('nan')):.2f}  {best}  "
            f"{s.get('train_img_per_s', 0):.0f} img/s  peak {s.get('peak_mem_mb', 0):.0f} MB  "
            f"{s.get('fit_wall_s', 0):.0f} s")


def _pyplot():
    """matplotlib's Figure with the Agg canvas only: no global backend switch, safe in headless runs."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise LakdError("plots need matplotlib: pip install matplotlib") from exc
    return Figure


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` in the format its suffix names (PNG without one), atomically: no half-written image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"))
    return path


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str | None = None) -> Path:
    """Accuracy (train, val and test top-1) and training loss per epoch, one colour per run label; writes a PNG.
    Train accuracy beside validation shows a student that learns but is evaluated wrongly (stale BatchNorm
    statistics) or one that does not learn at all."""
    return save_figure(curves_figure(runs, title), path)


def curves_figure(runs: dict[str, list[dict[str, Any]]], title: str | None = None) -> Figure:
    """The figure `plot_curves` writes. One legend of runs sits outside the panels and one of line styles inside,
    so a dozen methods stay readable; only the splits actually drawn are named."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure_cls = _pyplot()
    fig = figure_cls(figsize=(12, 4.2), dpi=100, layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    splits = (("val_top1", "-", "val"), ("test_top1", ":", "test"), ("train_top1", "--", "train"))
    drawn_splits: set[str] = set()
    run_handles = []
    for index, (label, epochs) in enumerate(runs.items()):
        color = run_color(index, len(runs))
        xs = [row["epoch"] for row in epochs]
        for key, style, split in splits:
            ys = [row.get(key) for row in epochs]
            if any(v is not None for v in ys):
                ax_acc.plot(xs, ys, style, color=color, marker="o", ms=3)
                drawn_splits.add(split)
        (handle,) = ax_loss.plot(xs, [row.get("train_loss") for row in epochs], "-", color=color, marker="o", ms=3,
                                 label=label)
        run_handles.append(handle)
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (sum of weighted terms)", title="training loss")
    style_handles = [Line2D([], [], color="0.2", linestyle=style, label=split)
                     for _, style, split in splits if split in drawn_splits]
    if style_handles:
        ax_acc.legend(handles=style_handles, fontsize=8, loc="lower right")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if run_handles:
        fig.legend(handles=run_handles, loc="outside right upper", fontsize=8, ncols=1 + (len(run_handles) - 1) // 16)
    if title:
        fig.suptitle(title)
    return fig


def run_color(index: int, count: int) -> Any:
    """The colour of run ``index`` of ``count``, the same in every plot of one summary: matplotlib's ten-colour
    cycle; past ten, tab20's ten strong shades then its ten light ones; past twenty, evenly spaced over turbo."""
    from matplotlib import colormaps

    if count <= 10:
        return f"C{index}"
    if count <= 20:
        return colormaps["tab20"](2 * index if index < 10 else 2 * (index - 10) + 1)
    return colormaps["turbo"](0.05 + 0.9 * index / (count - 1))


def plot_accuracy_vs_speed(points: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Scatter of test top-1 (mean ± std over seeds) against training img/s, one point per method."""
    return save_figure(accuracy_vs_speed_figure(points, title), path)


def accuracy_vs_speed_figure(points: list[dict[str, Any]], title: str | None = None) -> Figure:
    """The figure `plot_accuracy_vs_speed` writes. Methods of a protocol crowd together (most cost about what KD
    costs), so each label goes where it overlaps no point and no other label (see `_place_labels`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure_cls = _pyplot()
    fig = figure_cls(figsize=(6.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure the labels with, without touching pyplot's global state
    ax = fig.subplots()
    for index, pt in enumerate(points):
        ax.errorbar(pt["img_per_s"], pt["top1_mean"], yerr=pt.get("top1_std") or 0.0, fmt="o", capsize=3,
                    color=run_color(index, len(points)))
    ax.set(xlabel="training throughput (img/s)", ylabel="test top-1 at best val epoch (%)",
           title=title or "accuracy vs speed")
    ax.grid(alpha=0.3)
    _place_labels(fig, ax, points)
    return fig


def _place_labels(fig: Figure, ax: Axes, points: list[dict[str, Any]]) -> None:
    """Annotate each point (highest first) at the first free spot among: above right, below right, above left,
    below left of it, then the same spots one label height further out each round. A spot is free when the label
    overlaps no point, error bar or label already placed; a label set off from its point gets a leader line."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # fixes the axes limits and layout the labels are measured in
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []  # display-space boxes a label must not overlap: the points with their error bars first
    for pt in points:
        std = pt.get("top1_std") or 0.0
        (x0, y0), (x1, y1) = ax.transData.transform([(pt["img_per_s"], pt["top1_mean"] - std),
                                                     (pt["img_per_s"], pt["top1_mean"] + std)])
        placed.append(Bbox([[x0 - 4, y0 - 4], [x1 + 4, y1 + 4]]))
    axes_box = ax.get_window_extent(renderer)
    height_pt = 10.0  # one 8 pt label's line
    spots = [(dx, dy + sign * ring * height_pt, ring)  # offsets in points, nearest first; ring 0 touches the point
             for ring in range(12) for dx in (5.0, -5.0) for dy, sign in ((3.0, 1), (-11.0, -1))]
    for pt in sorted(points, key=lambda p: -p["top1_mean"]):
        xy = (pt["img_per_s"], pt["top1_mean"])
        for dx, dy, ring in spots:
            label = ax.annotate(pt["label"], xy, textcoords="offset points", xytext=(dx, dy), fontsize=8,
                                ha="left" if dx > 0 else "right",
                                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if ring else None)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text alone, not its leader line
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # nowhere free: the first spot, overlapping
            label = ax.annotate(pt["label"], xy, textcoords="offset points", xytext=(5, 3), fontsize=8)
            label.update_positions(renderer)
        placed.append(Text.get_window_extent(label, renderer))


