"""The training-curve figure: one distinct colour and one legend entry per run, and only the splits drawn named."""

from __future__ import annotations

from pathlib import Path

from lakd.report import curves_figure, plot_curves

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
