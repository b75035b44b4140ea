"""mmcl.plots: fixed method colours, figures written from fake run folders."""
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


def test_method_colours_are_fixed_distinct_and_cover_later_methods():
    from mmcl.methods import REGISTRY

    known = sorted(REGISTRY)  # every registered method: one colour each
    colours = [plots.method_color(m) for m in known]
    assert len(set(colours)) == len(known), dict(zip(known, colours))
    assert plots.method_color("comm") == plots.METHOD_COLORS["comm"].lower()
    # A method nobody has registered yet still gets a stable colour from the reserve palette.
    assert plots.method_color("new-method") in [c.lower() for c in plots.RESERVE_COLORS]
    assert plots.method_color("new-method") == plots.method_color("new-method")
    # A variant is a lighter shade of its method, different from the method and stable.
    variant = plots.method_color("comm~shared-pool")
    assert variant != plots.method_color("comm")
    assert sum(mcolors.to_rgb(variant)) > sum(mcolors.to_rgb(plots.method_color("comm")))


def test_the_same_method_has_the_same_colour_in_every_figure(runs):
    curves = plots.plot_accuracy_curves(runs, "class_incremental")
    forgetting = plots.plot_forgetting(runs, "class_incremental")
    modality = plots.plot_modality_accuracy(runs)
    line_colors, bar_colors, modality_colors = _line_colors(curves), _bar_colors(forgetting), _bar_colors(modality)
    assert set(line_colors) == {"finetune", "lwf", "replay", "comm-like-new-method"}
    for method, colour in line_colors.items():
        assert bar_colors[method] == colour == plots.method_color(method)
    assert modality_colors["replay"] == line_colors["replay"]
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
    image = figure.axes[0].images[0]
    data = image.get_array()
    assert data.mask[0, 1] and not data.mask[1, 0]  # above the diagonal: not trained yet
    assert data[2, 0] == pytest.approx(40.0)  # finetune, mean over two seeds
    assert image.get_clim() == (0, 100)
    plt.close("all")


def test_ablation_bars_show_full_method_and_variant(runs):
    figure = plots.plot_ablations(runs)
    labels = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert labels == ["full method (n=2)", "no-distillation (n=2)"][::-1] or labels == ["full method (n=2)",
                                                                                        "no-distillation (n=2)"]
    widths = sorted(p.get_width() for p in figure.axes[0].patches)
    assert widths == pytest.approx([(30 + 40 + 90) / 3, 60.0 + 1 / 6])
    plt.close("all")


def test_modality_stream_draws_one_line_per_modality_along_the_stream(runs):
    figure = plots.plot_modality_stream(runs, "modality-stream-recurring")
    assert len(figure.axes) == 2  # one panel per seed: each seed has its own modality order
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"image", "audio"}
    assert list(lines["image"].get_xdata()) == [0, 1, 2, 3]
    assert list(lines["image"].get_ydata()) == [80, 70, 55, 56.5]  # after task 3: mean(55, 58)
    assert list(lines["audio"].get_xdata()) == [1, 2, 3] and list(lines["audio"].get_ydata()) == [90, 85, 55]
    plt.close(figure)
