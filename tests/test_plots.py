"""mmcl.plots: which methods a figure highlights, figures written from fake run folders."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest
from test_results import write_run

from mmcl import plots, results


@pytest.fixture
def runs(tmp_path):
    for seed in (0, 1):
        for method, final in (("finetune", 40), ("lwf", 60), ("replay", 80), ("comm-like-new-method", 70)):
            write_run(tmp_path, method, seed, [[100, 0, 0], [70, 90, 0], [final, final, final + seed]])
        write_run(tmp_path, "lwf", seed, [[100, 0, 0], [50, 90, 0], [30, 40, 90]], variant="no-distillation")
        for method in ("zero-shot", "replay"):
            write_run(tmp_path, method, seed, [[90, 0], [70, 50]], scenario="modality_incremental",
                      benchmark="modality-stream", modalities=["image", "audio"],
                      modes=("modality_aware", "modality_agnostic"))
        write_run(tmp_path, "comm", seed, [[80, 5, 3, 2], [70, 90, 4, 1], [50, 85, 60, 6], [55, 40, 58, 70]],
                  scenario="modality_incremental", benchmark="modality-stream-recurring",
                  modalities=["image", "audio", "image", "audio"], modes=("modality_aware", "modality_agnostic"))
    return results.load_runs(tmp_path)


def _line_colors(figure) -> dict[str, str]:
    return {line.get_label(): mcolors.to_hex(line.get_color()) for axis in figure.axes for line in axis.get_lines()
            if not line.get_label().startswith("_")}


def _bar_colors(figure) -> dict[str, str]:
    found = {}
    for axis in figure.axes:
        for container in axis.containers:
            if hasattr(container, "patches") and container.get_label() and not container.get_label().startswith("_"):
                found[container.get_label()] = mcolors.to_hex(container.patches[0].get_facecolor())
    return found


def test_the_paper_method_and_each_familys_best_are_highlighted_the_rest_grey(runs):
    rows = runs[(runs["scenario"] == "class_incremental") & runs["variant"].isna()]
    styles = plots.method_styles(rows, "class_incremental")
    # Legend order: final accuracy, best first (replay about 80, the unregistered method 70, lwf 60, finetune 40).
    assert list(styles) == ["replay", "comm-like-new-method", "lwf", "finetune"]
    assert styles["replay"].role == "rival" and styles["replay"].color == plots.FAMILY_COLORS["rehearsal"]
    assert styles["replay"].legend == "replay (best rehearsal)"
    assert styles["lwf"].role == "rival" and styles["lwf"].color == plots.FAMILY_COLORS["classic"]
    assert styles["finetune"].role == "other" and styles["finetune"].color == plots.OTHER_COLOR  # lwf is better
    # A method nobody registered is a family of its own, in a reserve colour no other series has.
    assert styles["comm-like-new-method"].color in plots.RESERVE_COLORS
    # The scenario's paper method (the claims: MoE adapters on class-IL, COMM on modality-IL).
    assert plots.scenario_papers("class_incremental") == {"moe-adapters"}
    assert plots.scenario_papers("modality_incremental") == {"comm"}
    streams = runs[(runs["scenario"] == "modality_incremental") & runs["variant"].isna()]
    styles = plots.method_styles(streams, "modality_incremental")
    assert styles["comm"].role == "paper" and styles["comm"].color == plots.PAPER_COLORS["comm"]
    assert styles["zero-shot"].role == "reference" and styles["zero-shot"].linestyle == ":"
    assert list(styles)[-1] == "zero-shot"  # references close the legend
    colors = [style.color for style in styles.values() if style.highlighted]
    assert len(set(colors)) == len(colors)


def test_a_method_has_one_colour_across_a_scenarios_figures(runs):
    curves = plots.plot_accuracy_curves(runs, "class_incremental")
    forgetting = plots.plot_forgetting(runs, "class_incremental")
    line_colors, bar_colors = _line_colors(curves), _bar_colors(forgetting)
    assert set(line_colors) == {"lwf", "replay", "comm-like-new-method"}  # finetune: a grey line
    assert "lwf~no-distillation" not in str(line_colors)  # variants: the ablation figures only
    for method, colour in line_colors.items():
        assert bar_colors[method] == colour
    grey = [line for axis in curves.axes for line in axis.get_lines() if line.get_label() == "_finetune"]
    assert grey and mcolors.to_hex(grey[0].get_color()) == plots.OTHER_COLOR.lower()
    assert "finetune" in {text.get_text() for text in curves.axes[0].texts}  # named at its end
    modality = plots.plot_modality_accuracy(runs)
    assert _bar_colors(modality)["replay"] == plots.FAMILY_COLORS["rehearsal"].lower()
    plt.close("all")


def test_curves_have_labelled_axes_with_units_and_a_legend_outside_the_axes(runs):
    figure = plots.plot_accuracy_curves(runs, "class_incremental")
    axis = figure.axes[0]
    assert "(%)" in axis.get_ylabel() and axis.get_xlabel()
    assert axis.get_legend() is None and figure.legends  # a figure legend, not one drawn over the data
    figure.canvas.draw()
    legend_box = figure.legends[0].get_window_extent()
    axes_box = axis.get_window_extent()
    assert legend_box.y1 <= axes_box.y0  # below the axes
    plt.close("all")


def test_write_figures_writes_png_and_pdf_of_every_figure(runs, tmp_path):
    written = plots.write_figures(runs, tmp_path / "figures")
    assert {"accuracy_curves_class_incremental", "forgetting_class_incremental",
            "accuracy_matrix_class_incremental_av-events", "accuracy_curves_modality_incremental",
            "accuracy_matrix_modality_incremental_modality-stream_modality_aware",
            "accuracy_matrix_modality_incremental_modality-stream_modality_agnostic",
            "modality_accuracy", "ablations_lwf", "modality_stream_modality-stream-recurring"} <= set(written)
    for paths in written.values():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in paths)
    assert not plt.get_fignums()  # every figure closed after writing


def test_accuracy_matrix_heatmap_blanks_untrained_tasks(runs):
    figure = plots.plot_accuracy_matrices(runs, "class_incremental", "av-events", "standard")
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:4] == ["replay", "comm-like-new-method", "lwf", "finetune"]  # best final accuracy first
    image = figure.axes[titles.index("finetune")].images[0]
    data = image.get_array()
    assert data.mask[0, 1] and not data.mask[1, 0]  # above the diagonal: not trained yet
    assert data[2, 0] == pytest.approx(40.0)  # finetune, mean over two seeds
    assert image.get_clim() == (0, 100)
    assert all(mcolors.to_hex(axis.title.get_color()) == "#000000" for axis in figure.axes[:4])  # not pale
    plt.close("all")


def test_ablation_bars_show_each_variant_against_a_line_at_the_full_method(runs):
    figure = plots.plot_ablations(runs)
    axis = figure.axes[0]
    assert [tick.get_text() for tick in axis.get_yticklabels()] == ["no-distillation"]
    bars = [p for container in axis.containers if hasattr(container, "patches") for p in container]
    assert [p.get_width() for p in bars] == pytest.approx([(30 + 40 + 90) / 3])
    (full,) = [line for line in axis.get_lines() if line.get_label() == "full method"]
    assert full.get_xdata()[0] == pytest.approx(60.0 + 1 / 6) and full.get_linestyle() == "--"
    plt.close("all")


def test_modality_stream_draws_each_modality_along_the_stream_per_method(runs):
    figure = plots.plot_modality_stream(runs, "modality-stream-recurring")
    # Both seeds drew the same modality order: one row, averaged; one panel per modality.
    assert [axis.get_title() for axis in figure.axes] == ["image tasks", "audio tasks"]
    image, audio = ({line.get_label(): line for line in axis.get_lines()} for axis in figure.axes)
    assert set(image) == {"comm"}  # the only method run on this stream
    assert list(image["comm"].get_xdata()) == [1, 2, 3, 4]
    assert list(image["comm"].get_ydata()) == [80, 70, 55, 56.5]  # after task 3: mean(55, 58)
    assert list(audio["comm"].get_xdata()) == [2, 3, 4] and list(audio["comm"].get_ydata()) == [90, 85, 55]
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["image", "audio", "image", "audio"]
    plt.close(figure)
