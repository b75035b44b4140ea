"""Every figure of the pipeline can be read, and answers its question (issue 28).

The figures are drawn from records shaped like the smoke pipeline's: every method each scenario's
notebook runs, the fair comparisons of the main sweeps, the ablations of two methods, three seeds,
with final accuracies packed close together (the hardest case for names that must not collide).
Set ``MMCL_FIGURE_RUNS`` to a folder of real run records (e.g. ``mmcl reproduce --profile smoke
--output-dir DIR``: ``DIR/smoke``) to check their figures too.

What is checked, from the drawn figure: no two series share a colour (the matplotlib artists'
colours), no text overlaps another (window extents after drawing, rotated texts as rotated
rectangles), no figure wider than the text or taller than it needs (size bounds, no empty band
inside), the paper method and each family's best are the coloured series, the rest grey,
references dashed / dotted, variants only in the ablation figures, bars sorted with error bars and
their reference line; and the main tables mark their best numbers and the paper methods' rows.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer
from matplotlib.text import Text
from test_results import write_run

from mmcl import plots, reproduce, results
from mmcl.methods import REGISTRY

SEEDS = (0, 1, 2)
# (scenario, benchmark, tasks, modality order, modes): what the smoke notebooks run.
STREAMS = (("class_incremental", "av-events", 2, None, ("standard",)),
           ("class_incremental", "ego-activities", 2, None, ("standard",)),
           ("domain_incremental", "multilingual-emotion", 2, None, ("standard",)),
           ("modality_incremental", "modality-stream", 2, ["image", "audio"], ("modality_aware", "modality_agnostic")),
           ("modality_incremental", "modality-stream-recurring", 3, ["image", "audio", "image"],
            ("modality_aware", "modality_agnostic")))
ABLATED = ("lwf", "comm")


def _matrix(rng: np.random.Generator, tasks: int, final: float) -> list[list[float]]:
    """A lower-triangular accuracy matrix whose last row averages about ``final``."""
    matrix = np.zeros((tasks, tasks))
    for i in range(tasks):
        matrix[i, : i + 1] = np.clip(final + rng.normal(0, 6, i + 1) + 15 * (tasks - 1 - i), 0, 100)
        matrix[i, i] = np.clip(final + 20 + rng.normal(0, 3), 0, 100)
    return matrix.round(1).tolist()


def write_smoke_shaped_runs(root: Path) -> None:
    rng = np.random.default_rng(0)
    for scenario, benchmark, tasks, order, modes in STREAMS:
        methods = reproduce.compatible_methods(scenario)
        # Close finals (a 1-point ladder): the grey lines end together, their names must still not collide.
        finals = {method: 40 + 1.0 * k for k, method in enumerate(methods)}
        finals |= {"zero-shot": 12.0, "joint": 90.0}
        jobs = [(method, None, {}) for method in methods]
        for method in methods:
            for variant, overrides in REGISTRY[method].comparisons.items():
                if scenario in REGISTRY[method].comparison_scenarios:
                    jobs.append((method, variant, {"role": "comparison", "variant_overrides": overrides}))
            if method in ABLATED and benchmark in ("av-events", "modality-stream"):
                jobs += [(method, variant, {}) for variant in list(REGISTRY[method].ablations)[:4]]
        for method, variant, extra in jobs:
            for seed in SEEDS:
                final = finals[method] - (7 if variant else 0) + 2 * seed + (len(variant) % 5 if variant else 0)
                matrix = _matrix(rng, tasks, final)
                old = float(np.mean(matrix[-1][:-1]))  # the forgetting decomposition's probe, as the engine records it
                probe = {"final_own_old": old, "final_ncm_old": min(100.0, old + 12), "classifier_gap": 12.0,
                         "own_drop": 20.0, "ncm_drop": 8.0}
                write_run(root, method, seed, matrix, scenario=scenario, benchmark=benchmark, variant=variant,
                          profile="smoke", modalities=order, modes=modes, run_extra=extra,
                          metrics_extra={"forgetting_decomposition": {"enabled": True,
                                                                      "modes": {mode: probe for mode in modes}}})


@pytest.fixture(scope="module", params=["smoke-shaped", "records"])
def runs(request, tmp_path_factory):
    if request.param == "records":
        folder = os.environ.get("MMCL_FIGURE_RUNS")
        if not folder:
            pytest.skip("MMCL_FIGURE_RUNS names no folder of run records")
        return results.load_runs(folder)
    root = tmp_path_factory.mktemp("smoke-shaped")
    write_smoke_shaped_runs(root)
    return results.load_runs(root)


@pytest.fixture(scope="module")
def figures(runs):
    """name -> figure, each of :func:`every_figure` drawn once for every test of the module."""
    with plt.rc_context({"figure.max_open_warning": 0}):  # some thirty figures, open together on purpose
        drawn = {name: draw() for name, draw in every_figure(runs)}
    yield drawn
    for figure in drawn.values():
        plt.close(figure)


def every_figure(runs: pd.DataFrame):
    """(name, figure maker) of every figure write_figures makes of ``runs``."""
    base = runs[runs["variant"].isna()]
    for scenario in [s for s in results.SCENARIO_TITLES if s in set(base["scenario"])]:
        yield f"accuracy_curves_{scenario}", lambda s=scenario: plots.plot_accuracy_curves(runs, s)
        yield f"forgetting_{scenario}", lambda s=scenario: plots.plot_forgetting(runs, s)
        if pd.to_numeric(base.loc[base["scenario"] == scenario, "ncm_old_accuracy"], errors="coerce").notna().any():
            yield (f"forgetting_decomposition_{scenario}",
                   lambda s=scenario: plots.plot_forgetting_decomposition(runs, s))
        for benchmark, mode in plots._panels(base[base["scenario"] == scenario]):
            yield (f"accuracy_matrix_{scenario}_{benchmark}_{mode}",
                   lambda s=scenario, b=benchmark, m=mode: plots.plot_accuracy_matrices(runs, s, b, m))
        if scenario == "modality_incremental":
            yield "modality_accuracy", lambda: plots.plot_modality_accuracy(runs)
            streams = base[(base["scenario"] == scenario) & (base["label"] == "comm")]
            for benchmark in sorted(set(streams["benchmark"])):
                yield f"modality_stream_{benchmark}", lambda b=benchmark: plots.plot_modality_stream(runs, b)
    for method in results.sort_methods(runs.loc[runs["variant"].notna(), "method"]):
        yield f"ablations_{method}", lambda m=method: plots.plot_ablations(runs[runs["method"] == m])


# ----------------------------------------------------------------------------------- inspection
def _hex(color) -> str:
    return mcolors.to_hex(color, keep_alpha=False)


def series_colors(figure: plt.Figure) -> dict[str, set[str]]:
    """Label -> colours of the labelled series (lines, bar containers, line collections) of every
    axes; artists labelled ``_...`` (grey background methods, helpers) are left out."""
    found: dict[str, set[str]] = {}
    for axis in figure.axes:
        for line in axis.get_lines():
            if not line.get_label().startswith("_"):
                found.setdefault(line.get_label(), set()).add(_hex(line.get_color()))
        for container in axis.containers:
            if isinstance(container, BarContainer) and not str(container.get_label()).startswith("_"):
                found.setdefault(container.get_label(), set()).update(_hex(p.get_facecolor()) for p in container)
        for collection in axis.collections:
            if isinstance(collection, LineCollection) and not collection.get_label().startswith("_"):
                found.setdefault(collection.get_label(), set()).update(_hex(c) for c in collection.get_colors())
    return found


def grey_series_colors(figure: plt.Figure) -> set[str]:
    """Colours of the lines and bars of the methods drawn as background (labelled ``_<method>``)."""
    colors = set()
    for axis in figure.axes:
        colors |= {_hex(line.get_color()) for line in axis.get_lines() if line.get_label().startswith("_")
                   and line.get_label()[1:] in REGISTRY}
        colors |= {_hex(p.get_facecolor()) for c in axis.containers if isinstance(c, BarContainer)
                   and str(c.get_label())[1:] in REGISTRY for p in c}
    return colors


def _drawn_texts(figure: plt.Figure) -> list[Text]:
    """The texts a render shows: visible, not empty, in a visible axes, and of tick labels only those
    of ticks inside the view."""
    hidden_ticks = set()
    for axis in figure.axes:
        for ruler in (axis.xaxis, axis.yaxis):  # tick labels know no axes: found through theirs
            drawn = set(map(id, ruler._update_ticks())) if axis.get_visible() else set()
            for tick in ruler.get_major_ticks() + ruler.get_minor_ticks():
                if id(tick) not in drawn:
                    hidden_ticks |= {id(tick.label1), id(tick.label2)}
    texts = []
    for text in figure.findobj(Text):
        if (not text.get_visible() or not text.get_text().strip() or id(text) in hidden_ticks
                or (text.axes is not None and not text.axes.get_visible())):
            continue
        if text.axes is not None and text in (text.axes.xaxis.label, text.axes.yaxis.label) and not text.get_text():
            continue
        texts.append(text)
    return texts


def _corners(text: Text, renderer) -> np.ndarray:
    """The four corners (pixels) of a text's box, rotated with the text: the box of a rotated text
    is centred where its axis-aligned extent is, and as large as the text unrotated."""
    extent = Text.get_window_extent(text, renderer)  # an annotation's own extent includes its arrow
    angle = text.get_rotation()
    if angle % 90 == 0:
        return np.array([[extent.x0, extent.y0], [extent.x1, extent.y0], [extent.x1, extent.y1],
                         [extent.x0, extent.y1]])
    text.set_rotation(0)
    flat = Text.get_window_extent(text, renderer)
    text.set_rotation(angle)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [flat.width / 2, flat.height / 2]
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return half @ rotation.T + [(extent.x0 + extent.x1) / 2, (extent.y0 + extent.y1) / 2]


def _separated(first: np.ndarray, second: np.ndarray, tolerance: float) -> bool:
    """Separating-axis test of two convex quadrilaterals, allowing ``tolerance`` pixels of contact."""
    for polygon in (first, second):
        for k in range(4):
            edge = polygon[(k + 1) % 4] - polygon[k]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1)
            a, b = first @ normal, second @ normal
            if a.max() <= b.min() + tolerance or b.max() <= a.min() + tolerance:
                return True
    return False


def overlapping_texts(figure: plt.Figure) -> list[tuple[str, str]]:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = _drawn_texts(figure)
    boxes = [_corners(text, renderer) for text in texts]
    return [(texts[i].get_text(), texts[j].get_text()) for i in range(len(texts)) for j in range(i + 1, len(texts))
            if not _separated(boxes[i], boxes[j], tolerance=0.5)]


def largest_empty_band(figure: plt.Figure) -> float:
    """Inches of the tallest horizontal band inside the drawn content that holds nothing (between
    rows of panels, above a legend, ...): a figure taller than it needs shows one."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    spans = []
    for artist in [*[a for a in figure.axes if a.get_visible()], *figure.legends, *figure.texts]:
        box = artist.get_tightbbox(renderer) if hasattr(artist, "get_tightbbox") else artist.get_window_extent(renderer)
        if box is not None and box.height > 0:
            spans.append((box.y0, box.y1))
    spans.sort()
    gap, top = 0.0, spans[0][1]
    for low, high in spans[1:]:
        gap = max(gap, low - top)
        top = max(top, high)
    return gap / figure.dpi


# ----------------------------------------------------------------------------------------- tests
def test_no_two_series_share_a_colour_and_the_rest_is_grey(figures):
    for name, figure in figures.items():
        colors = series_colors(figure)
        assert all(len(c) == 1 for c in colors.values()), (name, colors)
        flat = [next(iter(c)) for c in colors.values()]
        assert len(set(flat)) == len(flat), (name, colors)
        assert plots.OTHER_COLOR.lower() not in flat, name
        assert grey_series_colors(figure) <= {plots.OTHER_COLOR.lower()}, name
        legend_colors = [_hex(h.get_color() if hasattr(h, "get_color") else h.get_facecolor())
                         for legend in figure.legends for h in legend.legend_handles]
        assert len(set(legend_colors)) == len(legend_colors), (name, legend_colors)


def test_no_text_overlaps_text(figures):
    for name, figure in figures.items():
        assert overlapping_texts(figure) == [], name


def test_no_figure_is_wider_than_the_text_or_taller_than_it_needs(figures):
    for name, figure in figures.items():
        width, height = figure.get_size_inches()
        assert width <= plots.TEXT_WIDTH + 1e-6, (name, width)
        rows = len({round(axis.get_position().y0, 2) for axis in figure.axes if axis.get_visible()})
        if name.startswith(("accuracy_curves", "modality_accuracy", "modality_stream")):
            assert height <= 0.9 + 2.4 * rows, (name, height, rows)  # a row of panels: at most 2.4 in
        assert height <= 8.5, (name, height)
        assert largest_empty_band(figure) < 0.2, (name, largest_empty_band(figure))
        for axis in figure.axes:
            bars = [p for c in axis.containers if isinstance(c, BarContainer) for p in c]
            if name.startswith(("forgetting_", "ablations_")) and bars and not name.startswith("forgetting_decomp"):
                inches = axis.get_window_extent().height / figure.dpi
                assert inches / len(bars) < 0.25, (name, inches, len(bars))  # no bar drawn taller than needed
        # Nothing drawn outside the figure, so nothing is cut in a notebook's or a PDF's frame.
        box = figure.get_tightbbox(figure.canvas.get_renderer())
        assert box.x0 >= -0.02 and box.y0 >= -0.02 and box.x1 <= width + 0.02 and box.y1 <= height + 0.02, name


def _final_accuracy(rows: pd.DataFrame) -> pd.Series:
    """Label -> final accuracy, mean over seeds per benchmark and mode, then over those."""
    return rows.groupby(["benchmark", "mode", "label"])["final_accuracy"].mean().groupby("label").mean()


def _expected_highlights(rows: pd.DataFrame, scenario: str) -> set[str]:
    """The paper method of the scenario and, of each other family, the method of the highest mean final accuracy."""
    papers = plots.scenario_papers(scenario)
    means = _final_accuracy(rows)
    best: dict[str, tuple[float, str]] = {}
    for label, value in means.items():
        family = results.method_family(label)
        if family == "reference":
            continue
        key = f"paper:{label}" if label in papers else family
        best[key] = max(best.get(key, (-1.0, "")), (value, label))
    return {label for _, label in best.values()}


def test_the_paper_method_and_each_familys_best_are_the_coloured_series(runs):
    for scenario in sorted(set(runs["scenario"])):
        rows = runs[(runs["scenario"] == scenario) & runs["variant"].isna()]
        figure = plots.plot_accuracy_curves(runs, scenario)
        coloured = set(series_colors(figure))
        assert coloured - {"joint", "zero-shot"} == _expected_highlights(rows, scenario), scenario
        paper = {"modality_incremental": "comm"}.get(scenario, "moe-adapters")
        assert series_colors(figure)[paper] == {plots.PAPER_COLORS[paper].lower()}
        styles = {line.get_label(): line.get_linestyle() for axis in figure.axes for line in axis.get_lines()}
        assert styles.get("joint", "--") == "--" and styles.get("zero-shot", ":") == ":"
        assert not [label for axis in figure.axes for label in (line.get_label() for line in axis.get_lines())
                    if "~" in label], "variants are drawn in the ablation figures only"
        # The legend lists the highlighted methods best first, then the references.
        entries = [t.get_text().split(" (")[0] for t in figure.legends[0].get_texts()]
        competing = [e for e in entries if e not in ("joint", "zero-shot")]
        finals = _final_accuracy(rows)[competing].tolist()
        assert finals == sorted(finals, reverse=True), (scenario, competing)
        # Every grey line is named at its end.
        names = {t.get_text() for axis in figure.axes for t in axis.texts}
        grey = {line.get_label()[1:] for axis in figure.axes for line in axis.get_lines()
                if line.get_label()[1:] in set(rows["label"])}
        assert grey <= names
        plt.close(figure)


def test_bars_are_sorted_with_error_bars_and_a_reference_line(runs):
    figure = plots.plot_forgetting(runs, "class_incremental")
    for axis in figure.axes:
        if not axis.get_visible():
            continue
        bars = sorted((p for c in axis.containers if isinstance(c, BarContainer) for p in c), key=lambda p: -p.get_y())
        widths = [p.get_width() for p in bars]
        assert widths == sorted(widths), "least forgetting at the top"
        if runs.groupby("label")["seed"].nunique().min() > 1:  # a spread to show
            assert len([c for c in axis.containers if not isinstance(c, BarContainer)]) == len(bars)  # error bars
        joint = [line for line in axis.get_lines() if line.get_label() == "joint"]
        assert joint and joint[0].get_linestyle() == "--"
    plt.close(figure)
    for method in sorted(set(runs.loc[runs["variant"].notna(), "method"])):
        figure = plots.plot_ablations(runs[runs["method"] == method])
        for axis in figure.axes:
            widths = [p.get_width() for c in axis.containers if isinstance(c, BarContainer)
                      for p in sorted(c, key=lambda p: -p.get_y())]
            assert widths == sorted(widths, reverse=True), "best variant at the top"
            full = [line for line in axis.get_lines() if line.get_label() == "full method"]
            assert full and full[0].get_linestyle() == "--"
        plt.close(figure)


def test_the_modality_stream_compares_comm_with_each_familys_best(runs):
    base = runs[runs["variant"].isna()]
    for benchmark in sorted(set(base.loc[(base["label"] == "comm") & (base["scenario"] == "modality_incremental"),
                                         "benchmark"])):
        figure = plots.plot_modality_stream(runs, benchmark)
        rows = base[(base["scenario"] == "modality_incremental") & (base["benchmark"] == benchmark)
                    & (base["mode"] == "modality_aware")]
        drawn = set(series_colors(figure))
        assert "comm" in drawn and drawn - {"joint", "zero-shot"} == _expected_highlights(rows, "modality_incremental")
        plt.close(figure)


def test_accuracy_matrix_titles_are_dark_and_nothing_is_cut(runs):
    scenario = min(set(runs["scenario"]))
    figure = plots.plot_accuracy_matrices(runs, scenario)
    for axis in figure.axes:
        if axis.get_visible() and axis.get_title():
            assert sum(mcolors.to_rgb(axis.title.get_color())) < 0.3, axis.get_title()  # black, not a pale hue
    assert overlapping_texts(figure) == []
    plt.close(figure)


# ------------------------------------------------------------------------------------ tables
def test_main_tables_mark_the_best_numbers_and_the_paper_methods(runs, tmp_path):
    written = results.write_tables(runs, tmp_path)
    markdown = written["main_class_incremental"]["md"].read_text()
    assert "| moe-adapters† |" in markdown
    assert "- † a reproduced paper's method; bold: the best mean of each column" in markdown
    table = results.main_table(runs, "class_incremental")
    for benchmark, group in table.groupby("benchmark"):
        competing = group[~group["method"].map(lambda m: results.is_reference(results.split_label(m)[0]))]
        best = competing.loc[competing["final_accuracy_mean"].idxmax()]
        shown = results.format_mean_std(best["final_accuracy_mean"], best["final_accuracy_std"])
        assert f"**{shown}**" in markdown, (benchmark, shown)
    tex = written["main_class_incremental"]["tex"].read_text()
    assert "moe-adapters$^\\dagger$" in tex and "\\mathbf{" in tex


def test_main_tables_state_each_benchmarks_buffer_per_method_from_the_records(tmp_path):
    def buffer(size, per_class, share, capacity=None, selection=None):
        record = {"per_class": per_class, "buffer_size": capacity, "size": size, "per_class_kept": {},
                  "training_samples": 100, "share_of_training_data": share}
        return {"buffer": record | ({"selection": selection} if selection else {})}

    for seed in (0, 1):
        write_run(tmp_path, "replay", seed, [[100, 0], [50, 50]], benchmark="av-events",
                  metrics_extra=buffer(40, 5, 0.05))
        write_run(tmp_path, "icarl", seed, [[100, 0], [55, 50]], benchmark="av-events",
                  metrics_extra=buffer(40, 5, 0.05, selection="herding"))
        # DER++ keeps one reservoir of per_class x classes: fewer exemplars than replay where classes recur.
        write_run(tmp_path, "derpp", seed, [[100, 0], [60, 50]], benchmark="av-events",
                  metrics_extra=buffer(20 + seed, 5, 0.025, capacity=20 + seed, selection="reservoir"))
        write_run(tmp_path, "replay", seed, [[100, 0], [50, 50]], benchmark="ego-activities",
                  metrics_extra=buffer(60, 5, 0.1))
    table = results.main_table(results.load_runs(tmp_path), "class_incremental")
    assert results.table_notes(table) == [
        "replay, icarl (herding) on av-events: buffer of 40 exemplars (5 per class), 5.0 % of the training data",
        ("derpp (reservoir) on av-events: buffer of 20–21 exemplars (5 per class, capped at 20–21), 2.5 % of the "
         "training data"),
        "replay on ego-activities: buffer of 60 exemplars (5 per class), 10.0 % of the training data"]
