"""The training-curve figure: one distinct colour and one legend entry per run, and only the splits drawn named."""

from __future__ import annotations

from pathlib import Path

from lakd.report import accuracy_vs_speed_figure, curves_figure, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _epochs(offset: float, train: bool) -> list[dict[str, float]]:
    rows = []
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "val_top1": 10.0 * epoch + offset, "test_top1": 9.0 * epoch + offset,
               "train_loss": 3.0 / epoch + offset}
        if train:
            row["train_top1"] = 11.0 * epoch + offset
        rows.append(row)
    return rows


def _legends(fig) -> tuple[list[str], list[str]]:
    ax_acc, _ = fig.axes
    styles = [t.get_text() for t in ax_acc.get_legend().get_texts()]
    (runs_legend,) = fig.legends
    return styles, [t.get_text() for t in runs_legend.get_texts()]


def test_twelve_runs_get_twelve_colours_and_one_legend_entry_each() -> None:
    runs = {f"method{i}": _epochs(i, train=False) for i in range(12)}
    fig = curves_figure(runs, title="t")
    styles, labels = _legends(fig)
    assert labels == list(runs)  # one entry per run, not one per run and split
    assert styles == ["val", "test"]  # no train curve in these runs, so "train" is not named
    ax_acc, ax_loss = fig.axes
    assert len(ax_acc.lines) == 24 and len(ax_loss.lines) == 12
    colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax_loss.lines}
    assert len(colours) == 12
    # a run's accuracy lines share its loss line's colour
    assert ax_acc.lines[2].get_color() == ax_acc.lines[3].get_color() == ax_loss.lines[1].get_color()


def test_train_accuracy_is_named_when_drawn_and_the_png_is_written(tmp_path: Path) -> None:
    runs = {"kd": _epochs(0, train=True), "lakd": _epochs(1, train=False)}
    styles, labels = _legends(curves_figure(runs))
    assert styles == ["val", "test", "train"] and labels == ["kd", "lakd"]
    out = plot_curves(runs, tmp_path / "sub" / "curves.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # no temporary file left


def test_crowded_scatter_labels_overlap_no_other_label_nor_any_point() -> None:
    from matplotlib.text import Text

    # twelve methods within a few img/s and tenths of a point of each other, as a protocol's KD family is
    points = [{"label": f"method-{i}", "img_per_s": 600.0 + 3 * (i % 4), "top1_mean": 58.0 + 0.1 * i,
               "top1_std": 0.3 if i % 3 == 0 else None} for i in range(12)]
    points.append({"label": "vanilla", "img_per_s": 1000.0, "top1_mean": 54.0, "top1_std": 0.2})
    fig = accuracy_vs_speed_figure(points, title="crowded")
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == sorted(p["label"] for p in points)
    boxes = []
    for label in labels:
        label.update_positions(renderer)
        boxes.append(Text.get_window_extent(label, renderer))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    markers = ax.transData.transform([(p["img_per_s"], p["top1_mean"]) for p in points])
    for box in boxes:
        for x, y in markers:
            assert not box.contains(x, y)
    colours = {line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color())
               for line in ax.lines if line.get_marker() == "o"}
    assert len(colours) == len(points)  # one colour per method, as in the curves figure
