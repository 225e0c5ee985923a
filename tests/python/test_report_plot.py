"""The finetune report's accuracy plot stays readable at any number of stages (long grouped
stage labels used to squeeze the axes into a sliver under 45-degree tick labels)."""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deeprebirth.train.report import accuracy_figure, plot_accuracy  # noqa: E402


def _history(count: int) -> list[dict]:
    label = "conv2+inception_3a+inception_3b+inception_4a (regress, then finetune) stage"
    return [
        {"label": f"{label} {i}", "top1": 50 + i % 40, "top5": 80 + i % 20} for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 3, 15, 60])
def test_accuracy_plot_keeps_axes_and_labels_readable(count: int) -> None:
    fig = accuracy_figure(_history(count))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        axes_box = ax.get_window_extent(renderer)
        assert axes_box.width >= 0.4 * fig.bbox.width  # the plot is not squeezed by its labels
        assert axes_box.height >= 0.5 * fig.bbox.height
        assert axes_box.height / count >= 12  # pixels per stage at the figure's dpi
        labels = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
        assert len(labels) == count
        for upper, lower in zip(labels, labels[1:], strict=False):
            assert not upper.overlaps(lower)
        assert all(box.x0 >= 0 and box.y0 >= 0 for box in labels)  # inside the figure
        assert ax.get_yticklabels()[0].get_text().startswith("0. conv2+inception_3a")
    finally:
        plt.close(fig)


def test_plot_accuracy_writes_a_png(tmp_path) -> None:
    path = plot_accuracy(_history(5), tmp_path / "accuracy.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
