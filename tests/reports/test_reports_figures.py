"""reports.figures: every figure renders to a PNG that opens, with the axes, series and values it claims."""

from __future__ import annotations

import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from PIL import Image
from report_helpers import AFTER, BASE, scale_metric, trained_copy

from reports import figures
from reports.load import load_results, method_colour


@pytest.fixture
def results():
    return load_results([BASE, AFTER])


def _png(fig, path):
    saved = figures.save_figure(fig, path)
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something is drawn
    return saved


def test_best_of_n_curve_has_one_line_per_run_with_the_logged_curve(results, tmp_path):
    fig = figures.best_of_n_figure(results, "ap50")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "samples per prompt N (best of N)" and ax.get_ylabel() == "best-of-N AP@50 (%)"
    assert [line.get_label() for line in ax.get_lines()] == [
        "base200 · perpo_synth_test_bon20", "base200 + PerPO · perpo_synth_test_bon20"]  # fmt: skip
    for line, run in zip(ax.get_lines(), results.runs, strict=True):
        xs, ys = line.get_data()
        assert list(xs) == list(range(1, 21))
        assert np.all(np.diff(ys) >= -1e-9)  # a best-of-k curve never falls
        assert ys[0] == pytest.approx(100 * results.value(run.label, "perpo_synth_test_bon20", "ap50_mean"))
        assert ys[-1] == pytest.approx(100 * results.value(run.label, "perpo_synth_test_bon20", "ap50_best"))
    assert len(ax.get_legend().get_texts()) == 2
    # each method its own colour, the one it has in every figure
    assert [to_hex(line.get_color()) for line in ax.get_lines()] == [method_colour("base"), method_colour("perpo")]
    _png(fig, tmp_path / "bon.png")
    assert figures.best_of_n_figure(results, "edit_dist") is None  # no OCR best-of-N task in these runs


def test_image_ablation_bars_pair_each_task_with_its_no_image_variant(results, tmp_path):
    fig = figures.image_ablation_figure(results)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [len(c) for c in bars] == [2, 2]  # with / without image x two runs
    with_image = [round(b.get_height(), 4) for b in bars[0]]
    assert with_image == [round(100 * 2 / 24, 4), round(100 * 4 / 24, 4)]
    assert [b.get_height() for b in bars[1]] == [0.0, 0.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["with image", "without image"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base200\nsynth test", "base200 + PerPO\nsynth test"]
    assert ax.get_ylabel() == "AP@50 (%)"
    _png(fig, tmp_path / "image.png")


def test_image_ablation_draws_the_blank_image_variant_where_runs_have_it(tmp_path):
    """The demo evaluates `_blankimg` (a uniform image) instead of `_noimg`: bars with image vs blank image."""
    blank = tmp_path / "blank"
    shutil.copytree(AFTER, blank)
    path = blank / "results.json"
    text = path.read_text().replace("perpo_synth_test_noimg", "perpo_synth_test_blankimg")
    path.write_text(text.replace('"image": "none"', '"image": "blank"'))
    samples = blank / "samples"
    (samples / "perpo_synth_test_noimg.jsonl").rename(samples / "perpo_synth_test_blankimg.jsonl")
    fig = figures.image_ablation_figure(load_results([blank]))
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["with image", "blank image"]
    assert ax.get_title() == "The image ablation: with image vs blank image"
    _png(fig, tmp_path / "blank.png")


@pytest.mark.parametrize(("field", "values"), [("n", (2, 4, 8)), ("gamma", (0.0, 0.5, 1.0)), ("margin", (0.2, 0.8))])
def test_sweeps_draw_one_line_per_method_over_the_training_setting(tmp_path, field, values):
    runs = []
    for index, value in enumerate(values):
        for loss in ("perpo", "dpo") if field == "n" else ("perpo",):
            run = trained_copy(tmp_path, f"{loss}{index}", loss=loss, **{field: value})
            scale_metric(run, "perpo_synth_test", "ap50", (index + 1) / len(values) / (2 if loss == "dpo" else 1))
            runs.append(run)
    results = load_results([BASE, *runs])  # the base run has no training setting: not in the sweep
    series = figures.default_series(results, field)
    assert ("perpo_synth_test", "ap50") in series and ("perpo_fox_en_page", "edit_dist") in series
    fig = figures.sweep_figure(results, field, [("perpo_synth_test", "ap50")])
    (ax,) = fig.axes
    assert ax.get_xlabel() == figures.SWEEP_FIELDS[field] and ax.get_ylabel() == "AP@50 (%)"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == (["DPO", "PerPO"] if field == "n" else ["PerPO"])
    assert to_hex(lines[-1].get_color()) == method_colour("perpo")
    xs, ys = lines[-1].get_data()
    assert list(xs) == list(values)
    expected = [100 * 4 / 24 * (i + 1) / len(values) for i in range(len(values))]
    assert list(ys) == pytest.approx(expected)
    _png(fig, tmp_path / f"{field}.png")
    plt.close("all")


def test_a_sweep_needs_two_values(results):
    assert figures.sweep_figure(results, "gamma", [("perpo_synth_test", "ap50")]) is None


def test_two_runs_of_one_method_keep_apart_in_the_best_of_n_figure(tmp_path):
    results = load_results([AFTER, trained_copy(tmp_path, "again", loss="perpo")])
    (ax,) = figures.best_of_n_figure(results).axes
    colors = [to_hex(line.get_color()) for line in ax.get_lines()]
    assert len(colors) == 2 and len(set(colors)) == 2  # not both PerPO red
    plt.close("all")
