"""`mclstudio replay`'s terminal plot: a marker per learner, so that a legend says which line is which
learner, in colour or not (pytest's stdout is not a terminal: the plot is colourless here)."""

from __future__ import annotations

from mclstudio.cli.commands.replay import _plot


def test_the_plot_has_a_legend_with_one_marker_per_learner() -> None:
    rows = [{"learner": "mamba", "accuracy_by_tasks_learned": [1.0, 0.9, 0.8]},
            {"learner": "transformer", "accuracy_by_tasks_learned": [1.0, 0.6, 0.3]}]
    text = _plot(rows)
    assert text.splitlines()[-1] == "legend: ● mamba   ▲ transformer"
    body = "\n".join(text.splitlines()[:-1])
    assert "● mamba" in body and "▲ transformer" in body  # plotext's own legend box
    # each line drawn with its own marker: mamba's ends top right (0.8), the transformer's lower (0.3)
    assert body.count("●") > 10 and body.count("▲") > 10
