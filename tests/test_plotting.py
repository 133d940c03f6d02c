"""Figures: written atomically in their own format, and what `compare`'s plots draw from hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.layout_engine import ConstrainedLayoutEngine

from memlab.analysis import compare_plots
from memlab.analysis.compare import Metric, Row
from memlab.analysis.compare_plots import plot_comparison, pooled_grid
from memlab.plotting import pyplot, save_figure

plt = pyplot()


def test_save_figure_writes_the_paths_format_closes_the_figure_and_leaves_no_temporary(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "figure.svg"
    assert save_figure(fig, path) == path
    assert "<svg" in path.read_text()  # the format follows the file's suffix, not the temporary's
    assert [p.name for p in tmp_path.iterdir()] == ["figure.svg"]
    assert not plt.fignum_exists(fig.number)


def test_a_figure_that_cannot_be_written_leaves_nothing_and_names_its_file(tmp_path, monkeypatch):
    """A full disk had left the staging file and the figure open, and an error that named no file."""
    import errno

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    draw = fig.savefig

    def full(target, **kwargs):
        draw(target, **kwargs)  # what fits is written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fig, "savefig", full)
    with pytest.raises(OSError, match="No space left on device: '.*figure.png'"):
        save_figure(fig, tmp_path / "figure.png")
    assert list(tmp_path.iterdir()) == [] and not plt.fignum_exists(fig.number)


def test_save_figure_tightens_a_plain_figure_and_keeps_a_layout_engine(tmp_path, recwarn):
    plain, ax = plt.subplots()
    ax.set_ylabel("a label that needs room")
    save_figure(plain, tmp_path / "plain.png")
    assert plain.subplotpars.left != plt.rcParams["figure.subplot.left"]  # laid out to fit its labels
    constrained, _ = plt.subplots(constrained_layout=True)
    save_figure(constrained, tmp_path / "constrained.png")
    assert isinstance(constrained.get_layout_engine(), ConstrainedLayoutEngine) and not recwarn.list


def test_the_needle_grid_pools_the_cells_of_every_task():
    payload = {"context_lengths": [256, 1024], "depths": [0.0, 0.5, 1.0], "tasks": {
        "niah": {"cells": [{"context_len": 256, "depth": 0.5, "correct": 3, "n": 4},
                           {"context_len": 1024, "depth": 0.0, "correct": 0, "n": 2}]},
        "multi": {"cells": [{"context_len": 256, "depth": 0.5, "correct": 1, "n": 4}]}}}
    np.testing.assert_array_equal(pooled_grid(payload), [[np.nan, 0.5, np.nan], [0.0, np.nan, np.nan]])


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_comparison makes, by file name, kept open to be inspected instead of saved."""
    kept = {}

    def keep(fig, path):
        kept[path.name] = fig
        return path

    monkeypatch.setattr(compare_plots, "save_figure", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def curve(split: str, difficulty: int, accuracy: float | None) -> dict:
    return {"split": split, "difficulty": difficulty, "accuracy": accuracy}


LONGCTX = {"context_lengths": [256, 1024], "depths": [0.0, 0.5], "tasks": {"niah": {"cells": [
    {"context_len": 256, "depth": 0.0, "correct": 1, "n": 2}, {"context_len": 1024, "depth": 0.5, "correct": 2, "n": 2}]}}}
ROWS = [
    Row("gdn", "gdn", "tiny", algorithmic=Metric(0.5, [0.4, 0.55], 100), ood=Metric(0.2, [0.1, 0.3], 100),
        needle=Metric(0.8, [0.7, 0.9], 100), perplexity=Metric(20.0, [18.0, 23.0], 10),
        delta=Metric(0.1, [-0.05, 0.2], 100), train_time_s=Metric(100.0),
        results={"algorithmic": {"tasks": {f"task{i}": {"by_difficulty": []} for i in range(6)} | {"task0": {
            "by_difficulty": [curve("iid", 4, 0.5), curve("iid", 8, None), curve("ood", 32, 0.25)]}}},
                 "longctx": LONGCTX}),
    Row("baseline", "baseline", "tiny"),  # no results at all: empty bars, no curves, no heat-map
]


def test_plots_are_written_when_any_run_has_their_data(tmp_path, figures):
    files = plot_comparison(ROWS, tmp_path)
    assert [f.name for f in files] == ["compare.png", "compare_length.png", "compare_needle.png"]
    assert [f.name for f in plot_comparison(ROWS[1:], tmp_path)] == ["compare.png"]


def bars(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_the_headline_bars_show_each_metric_with_its_interval(tmp_path, figures):
    plot_comparison(ROWS, tmp_path)
    axes = figures["compare.png"].axes
    assert [ax.get_title() for ax in axes] == ["algorithmic accuracy %", "needle accuracy %",
                                               "validation perplexity (log scale)", "memory ablation Delta (pts)",
                                               "training time (s)"]
    iid, ood = bars(axes[0])
    assert [bar.get_height() for bar in iid] == pytest.approx([50, 0])  # a missing value: an empty bar
    assert [bar.get_height() for bar in ood] == pytest.approx([20, 0])
    assert [bar.get_x() + bar.get_width() / 2 for bar in (*iid, *ood)] == pytest.approx([-0.2, 0.8, 0.2, 1.2])
    (segment, _) = iid.errorbar.lines[2][0].get_segments()  # the first run's interval, as drawn
    assert segment[:, 1] == pytest.approx([40, 55])
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["IID", "OOD"] and axes[1].get_legend() is None
    (delta,) = bars(axes[3])
    assert delta.errorbar.lines[2][0].get_segments()[0][:, 1] == pytest.approx([-5, 20])
    assert axes[2].get_yscale() == "log" and axes[0].get_yscale() == "linear"


def test_accuracy_by_length_draws_iid_solid_ood_dashed_and_hides_unused_panels(tmp_path, figures):
    plot_comparison(ROWS, tmp_path)
    axes = figures["compare_length.png"].axes
    assert [ax.get_title() for ax in axes if ax.axison] == [f"task{i}" for i in range(6)]
    assert len(axes) == 10  # two rows of five panels, four of them unused
    iid, ood = axes[0].lines
    assert (iid.get_linestyle(), list(iid.get_xdata()), list(iid.get_ydata())) == ("-", [4], [50])  # None: no point
    assert (ood.get_linestyle(), list(ood.get_xdata()), list(ood.get_ydata())) == ("--", [32], [25])


def test_needle_maps_show_only_runs_with_needle_results_lengths_upward(tmp_path, figures):
    plot_comparison(ROWS, tmp_path)
    heat, _colorbar = figures["compare_needle.png"].axes
    (image,) = heat.images
    assert heat.get_title() == "gdn" and image.origin == "lower"
    np.testing.assert_array_equal(image.get_array().filled(np.nan), [[50, np.nan], [np.nan, 100]])
    assert [t.get_text() for t in heat.get_yticklabels()] == ["256", "1024"]
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0", "0.5"]


def test_a_metric_with_an_interval_but_no_value_is_an_empty_bar(tmp_path, figures):
    """paired_bootstrap of no outcomes gives delta None with ci95 [-1, 1]; the bars had ended in a TypeError."""
    plot_comparison([Row("gdn", "gdn", "tiny", delta=Metric(None, [-1.0, 1.0], 0))], tmp_path)
    ax = figures["compare.png"].axes[3]
    (delta,) = bars(ax)
    assert [bar.get_height() for bar in delta] == [0]
    # marked n/a, with no error bar: its caps at 0 had read as a Delta measured to be 0
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert not np.isfinite(np.concatenate(delta.errorbar.lines[2][0].get_segments())).any()
