"""The paper's figures, built only from the run DataFrame of :mod:`mmcl.results`.

One style for every figure (:func:`paper_style`): sized for a single column (3.4 in) or the
full text width (7 in), 8-pt fonts, grid behind the data, legends outside the axes, PNG
(300 dpi) + PDF with embedded TrueType fonts.

Colours: every method has one colour in every figure (:func:`method_color`). Known methods use
the Okabe-Ito colour-blind-safe palette (plus one Tol colour); a method added later gets a colour
from a reserve colour-blind-safe palette chosen by a stable hash of its name, so it never depends
on which other methods a figure shows. An ablation variant ``method~variant`` is a lighter shade
of its method's colour (bars also get a hatch, so variants differ without relying on shade).
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mmcl import metrics, results
from mmcl.atomic import atomic_write_bytes

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
TEXT_WIDTH = 7.0

# Okabe & Ito (2008) colours, colour-blind safe; black and grey mark the reference methods.
METHOD_COLORS = {
    "zero-shot": "#999999",
    "finetune": "#882255",  # Tol "wine": Okabe-Ito's yellow is unreadable on white
    "ewc": "#56B4E9",
    "lwf": "#E69F00",
    "replay": "#009E73",
    "l2p": "#CC79A7",
    "moe-adapters": "#0072B2",
    "comm": "#D55E00",
    "joint": "#000000",
    # the zoo, from Paul Tol's "muted" scheme (colour-blind safe) and its rose; one colour each, so a
    # wide figure does not draw five methods in one hue
    "av-cil": "#117733",
    "derpp": "#999933",
    "icarl": "#44AA99",
    "slca": "#6699CC",
    "coda-prompt": "#AA4499",
    "dualprompt": "#661100",
    "aper": "#DDCC77",
    "ranpac": "#CC6677",
    "simplecil": "#332288",
}
# Paul Tol's "muted" scheme (colour-blind safe), for methods registered later.
RESERVE_COLORS = ("#332288", "#117733", "#44AA99", "#999933", "#AA4499", "#DDCC77", "#661100", "#6699CC")
# Reference methods are drawn dashed / dotted, so they read as bounds rather than competitors.
METHOD_LINESTYLES = {"zero-shot": ":", "joint": "--"}
VARIANT_HATCHES = ("//", "..", "xx", "\\\\", "++", "oo", "||")
MODALITY_ORDER = ("image", "video", "audio", "depth", "acc", "gyro", "text")
# One colour per modality in the modality-stream figure (Okabe-Ito, distinct from nothing else there).
MODALITY_COLORS = {"image": "#0072B2", "video": "#D55E00", "audio": "#009E73", "depth": "#CC79A7",
                   "acc": "#E69F00", "gyro": "#56B4E9", "text": "#000000"}


def _stable_index(name: str, size: int) -> int:
    # hashlib, not hash(): Python salts str hashes per process, colours must not change.
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % size


def _variant_key(label: str) -> str | None:
    """What sets a label apart from its base method: the variant and/or the configuration difference."""
    _, variant, difference = results.label_parts(label)
    if difference is None:
        return variant
    return f"{variant or ''} ({difference})"


def method_color(label: str) -> str:
    """The colour (hex) of a method, variant or configuration label; the same in every figure and session."""
    method = results.split_label(label)[0]
    base = METHOD_COLORS.get(method) or RESERVE_COLORS[_stable_index(method, len(RESERVE_COLORS))]
    variant = _variant_key(label)
    if variant is None:
        return mcolors.to_hex(base)
    # Variants and other configurations: the base hue mixed with white by an amount fixed by the name.
    amount = (0.3, 0.45, 0.6, 0.38, 0.52)[_stable_index(variant, 5)]
    rgb = np.array(mcolors.to_rgb(base))
    return mcolors.to_hex(rgb + (1.0 - rgb) * amount)


def method_palette(labels: Iterable[str]) -> dict[str, str]:
    return {label: method_color(label) for label in labels}


def variant_hatch(label: str) -> str:
    variant = _variant_key(label)
    return "" if variant is None else VARIANT_HATCHES[_stable_index(variant, len(VARIANT_HATCHES))]


@contextmanager
def paper_style():
    """Matplotlib settings of every figure: small serif-free fonts, light grid, vector-friendly PDF."""
    rc = {
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "legend.title_fontsize": 7, "axes.linewidth": 0.6, "grid.linewidth": 0.4,
        "lines.linewidth": 1.4, "lines.markersize": 4, "pdf.fonttype": 42, "ps.fonttype": 42,
        "savefig.dpi": 300, "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.axisbelow": True,
    }
    interactive = matplotlib.is_interactive()
    try:
        with sns.axes_style("whitegrid", {"grid.color": "#dddddd"}), plt.rc_context(rc):
            try:
                yield
            finally:
                interactive = matplotlib.is_interactive()
    finally:
        # A notebook's inline backend turns interactive mode on when the first figure loads it, which
        # rc_context would undo on exit: no figure of a later cell would then be shown.
        matplotlib.interactive(interactive)


def save_figure(figure: plt.Figure, directory: str | Path, name: str) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` under ``directory`` (tight bounding box).

    Each is rendered in memory and written atomically (:mod:`mmcl.atomic`): matplotlib writing
    the file itself would leave half a figure under its name when the disk fills up.
    """
    directory = Path(directory)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    with paper_style():  # the savefig settings (dpi, embedded fonts) apply when saving
        for path in paths:
            rendered = io.BytesIO()
            figure.savefig(rendered, format=path.suffix[1:], dpi=300, bbox_inches="tight", pad_inches=0.02)
            atomic_write_bytes(path, rendered.getvalue())
    return paths


def _panel_title(benchmark: str, mode: str, show_mode: bool) -> str:
    return f"{benchmark} · {results.MODE_TITLES.get(mode, mode)}" if show_mode else benchmark


def _panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = frame[["benchmark", "mode"]].drop_duplicates()
    modes = list(results.MODE_TITLES)
    return sorted(map(tuple, pairs.to_numpy()), key=lambda p: (p[0], modes.index(p[1]) if p[1] in modes else 9))


def _figure(panels: int, height: float = 2.3) -> tuple[plt.Figure, list[plt.Axes]]:
    width = COLUMN_WIDTH if panels == 1 else min(TEXT_WIDTH, 0.5 * TEXT_WIDTH * panels)
    figure, axes = plt.subplots(1, panels, figsize=(width, height), squeeze=False, layout="constrained")
    return figure, list(axes[0])


def _legend_below(figure: plt.Figure, labels: list[str], kind: str = "line") -> None:
    """One legend for the whole figure, under the axes, so it never covers data."""
    handles = []
    for label in labels:
        if kind == "line":
            method, _ = results.split_label(label)
            handles.append(plt.Line2D([], [], color=method_color(label), marker="o",
                                      linestyle=METHOD_LINESTYLES.get(method, "-"), label=label))
        else:
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=method_color(label), edgecolor="#333333",
                                         linewidth=0.4, hatch=variant_hatch(label), label=label))
    widest = 5 if figure.get_figwidth() > COLUMN_WIDTH + 0.1 else 3
    rows = -(-len(labels) // widest)
    columns = -(-len(labels) // rows)  # balanced rows instead of one short last row
    figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False,
                  handlelength=2.2, columnspacing=1.2)


def _scenario_runs(runs: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """The rows of the scenario's main table: defaults and fair comparisons, no ablation variant."""
    selected = runs[(runs["scenario"] == scenario) & (runs["variant"].isna() | results.is_comparison(runs))]
    if selected.empty:
        raise ValueError(f"no runs of scenario {scenario!r}")
    return selected


def plot_accuracy_curves(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Average accuracy on the seen tasks after each task, per method: mean over seeds, band = ±1 std.

    One panel per (benchmark, evaluation mode) of ``scenario``.
    """
    curves = results.accuracy_curves(_scenario_runs(runs, scenario))
    panels = _panels(curves)
    labels = results.sort_methods(curves["label"])
    show_mode = curves["mode"].nunique() > 1
    with paper_style():
        figure, axes = _figure(len(panels))
        for axis, (benchmark, mode) in zip(axes, panels):
            data = curves[(curves["benchmark"] == benchmark) & (curves["mode"] == mode)]
            for label in labels:
                stats = data[data["label"] == label].groupby("task")["accuracy"].agg(["mean", "std"]).reset_index()
                if stats.empty:
                    continue
                color = method_color(label)
                axis.plot(stats["task"], stats["mean"], color=color, marker="o",
                          linestyle=METHOD_LINESTYLES.get(results.split_label(label)[0], "-"), label=label)
                if stats["std"].notna().any():
                    axis.fill_between(stats["task"], stats["mean"] - stats["std"].fillna(0),
                                      stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.12, linewidth=0)
            tasks = sorted(data["task"].unique())
            axis.set_xticks(tasks)
            axis.set_xlim(tasks[0] - 0.15, tasks[-1] + 0.15)
            axis.set_ylim(0, 101)
            axis.set_xlabel("tasks learned")
            axis.set_title(_panel_title(benchmark, mode, show_mode))
        axes[0].set_ylabel("accuracy on seen tasks (%)")
        _legend_below(figure, labels)
    return figure


def plot_accuracy_matrices(runs: pd.DataFrame, scenario: str, benchmark: str | None = None,
                           mode: str | None = None) -> plt.Figure:
    """Heatmaps of the accuracy matrix ``A[i, j]`` (mean over seeds), one per method.

    Rows: after training task i; columns: evaluated task j; tasks not yet trained (j > i) are
    left blank. One shared colour scale, 0-100 %.
    """
    selected = _scenario_runs(runs, scenario)
    benchmark = benchmark or min(selected["benchmark"].unique())
    mode = mode or _panels(selected[selected["benchmark"] == benchmark])[0][1]
    selected = selected[(selected["benchmark"] == benchmark) & (selected["mode"] == mode)]
    labels = results.sort_methods(selected["label"])
    columns = min(len(labels), 3)
    rows = -(-len(labels) // columns)
    with paper_style():
        figure, axes = plt.subplots(rows, columns, figsize=(TEXT_WIDTH if columns > 1 else COLUMN_WIDTH,
                                                            0.4 + 2.0 * rows),
                                    squeeze=False, layout="constrained")
        for axis in axes.flat[len(labels):]:
            axis.set_visible(False)
        image = None
        for number, (axis, label) in enumerate(zip(axes.flat, labels)):
            matrix, count = results.mean_accuracy_matrix(selected[selected["label"] == label])
            size = len(matrix)
            masked = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), k=1), matrix)
            image = axis.imshow(masked, vmin=0, vmax=100, cmap="viridis", aspect="equal")
            for i in range(size):
                for j in range(i + 1):
                    value = matrix[i, j]
                    axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6.5,
                              color="black" if value > 60 else "white")
            ticks = list(range(size))
            axis.set_xticks(ticks, [str(t + 1) for t in ticks])
            axis.set_yticks(ticks, [str(t + 1) for t in ticks])
            axis.grid(False)
            axis.set_title(f"{label} (n={count})", color=method_color(label) if label != "zero-shot" else "#555555")
            # Axis names once per row / column: the panels share them.
            if number % columns == 0:
                axis.set_ylabel("after training task")
            if number + columns >= len(labels):
                axis.set_xlabel("evaluated task")
        colorbar = figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
        colorbar.set_label("accuracy (%)")
        figure.suptitle(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: {_panel_title(benchmark, mode, mode != 'standard')}")
    return figure


def _bars(axis: plt.Axes, data: pd.DataFrame, groups: list[str], group_column: str, labels: list[str],
          value: str = "value") -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per label; error bars ±1 std over seeds."""
    width = 0.8 / max(len(labels), 1)
    for k, label in enumerate(labels):
        stats = data[data["label"] == label].groupby(group_column)[value].agg(["mean", "std"])
        positions = [g + (k - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        means = [stats["mean"].get(group, np.nan) for group in groups]
        errors = [stats["std"].get(group, np.nan) for group in groups]
        axis.bar(positions, means, width=width, color=method_color(label), edgecolor="#333333", linewidth=0.4,
                 hatch=variant_hatch(label), label=label)
        axis.errorbar(positions, means, yerr=np.nan_to_num(errors), fmt="none", ecolor="#333333",
                      elinewidth=0.7, capsize=1.5)
    axis.set_xticks(range(len(groups)), groups)
    axis.set_xlim(-0.5, len(groups) - 0.5)


def plot_forgetting(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Forgetting per method (mean over seeds, error bar ±1 std), grouped by benchmark and mode."""
    selected = _scenario_runs(runs, scenario)
    show_mode = selected["mode"].nunique() > 1
    data = selected.assign(value=selected["forgetting"].astype(float),
                           group=[_panel_title(b, m, show_mode) for b, m in zip(selected["benchmark"], selected["mode"])])
    groups = [_panel_title(b, m, show_mode) for b, m in _panels(selected)]
    labels = results.sort_methods(data["label"])
    with paper_style():
        figure, axes = _figure(1, 2.4)
        if len(groups) > 1:
            figure.set_figwidth(min(TEXT_WIDTH, COLUMN_WIDTH * 0.75 * len(groups) + 0.8))
        _bars(axes[0], data, groups, "group", labels)
        axes[0].axhline(0, color="#333333", linewidth=0.6)
        axes[0].set_ylabel("forgetting (pp, lower is better)")
        axes[0].set_title(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: forgetting")
        _legend_below(figure, labels, kind="bar")
    return figure


def plot_forgetting_decomposition(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Why methods forget: per method, old-class accuracy after the last task read by its own
    classifier (solid bar) and by a nearest-class-mean probe on its representation (hatched bar of
    the same colour); mean over seeds, error bar ±1 std. The reproduced papers' methods stand apart
    at the right, on a shaded band. One panel per (benchmark, evaluation mode) of ``scenario``,
    stacked. A probe bar far above its own bar: the representation still holds the old classes
    and the classifier lost them; both low: the representation forgot.

    Runs without the diagnostic are left out (silently: the table, :func:`mmcl.results.
    forgetting_decomposition_table`, says so in one line); ValueError when no run of ``scenario`` has it."""
    selected = results.decomposition_runs(runs[runs["scenario"] == scenario], warn=False)
    if selected.empty:
        raise ValueError(f"no run of scenario {scenario!r} holds the forgetting decomposition")
    panels = _panels(selected)
    labels = results.sort_methods(selected["label"])
    others = [label for label in labels if not results.is_paper_method(results.split_label(label)[0])]
    papers = [label for label in labels if label not in others]
    positions = {label: float(k) for k, label in enumerate(others)}
    positions |= {label: len(others) + 0.6 + k for k, label in enumerate(papers)}  # a gap before the papers
    show_mode = selected["mode"].nunique() > 1
    width = 0.38
    with paper_style():
        figure, axes = plt.subplots(len(panels), 1, figsize=(min(TEXT_WIDTH, 1.2 + 0.36 * len(labels)),
                                                             0.9 + 1.7 * len(panels)),
                                    squeeze=False, sharex=True, layout="constrained")
        axes = list(axes[:, 0])
        for axis, (benchmark, mode) in zip(axes, panels):
            data = selected[(selected["benchmark"] == benchmark) & (selected["mode"] == mode)]
            if papers:
                axis.axvspan(len(others) + 0.6 - 0.5, len(others) + 0.6 + len(papers) - 0.5, color="#f2f2f2",
                             zorder=0, linewidth=0)
            for label in labels:
                values = data[data["label"] == label]
                if values.empty:  # not run here, or no representation in this mode (MoE adapters, agnostic)
                    if label in set(selected["label"]):
                        axis.text(positions[label], 2, "n/a", ha="center", va="bottom", fontsize=6, color="#777777")
                    continue
                color = method_color(label)
                for offset, column, hatch, face in ((-width / 2, "own_old_accuracy", "", color),
                                                    (width / 2, "ncm_old_accuracy", "////", "white")):
                    numbers = values[column].astype(float)
                    axis.bar(positions[label] + offset, numbers.mean(), width=width, color=face, edgecolor=color,
                             linewidth=0.8, hatch=hatch, zorder=2)
                    if len(numbers) > 1:
                        axis.errorbar(positions[label] + offset, numbers.mean(), yerr=numbers.std(ddof=1), fmt="none",
                                      ecolor="#333333", elinewidth=0.7, capsize=1.5, zorder=3)
            axis.set_ylim(0, 105)
            axis.set_ylabel("old-class acc. (%)")
            axis.set_title(_panel_title(benchmark, mode, show_mode), loc="left")
            if papers:
                axis.text(len(others) + 0.6 + (len(papers) - 1) / 2, 101, "paper methods", ha="center", va="top",
                          fontsize=6.5, color="#555555")
        axes[-1].set_xticks([positions[label] for label in labels], labels, rotation=45, ha="right")
        axes[-1].set_xlim(-0.6, max(positions.values()) + 0.6)
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor="#777777", edgecolor="#777777", label="own classifier"),
                   plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="#777777", hatch="////",
                                 label="NCM probe on its representation")]
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        figure.suptitle(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: old-class accuracy after the last task")
    return figure


def plot_modality_accuracy(runs: pd.DataFrame, scenario: str = "modality_incremental") -> plt.Figure:
    """Final accuracy on each modality's task per method; one panel per evaluation mode."""
    data = results.modality_accuracy(_scenario_runs(runs, scenario)).rename(columns={"accuracy": "value"})
    if data.empty:
        raise ValueError("no per-modality accuracy in these runs")
    panels = _panels(data)
    present = set(data["modality"])
    modalities = [m for m in MODALITY_ORDER if m in present] + sorted(present - set(MODALITY_ORDER))
    labels = results.sort_methods(data["label"])
    show_mode = data["mode"].nunique() > 1
    with paper_style():
        figure, axes = _figure(len(panels), 2.4)
        for axis, (benchmark, mode) in zip(axes, panels):
            _bars(axis, data[(data["benchmark"] == benchmark) & (data["mode"] == mode)], modalities, "modality", labels)
            axis.set_ylim(0, 105)
            axis.set_xlabel("modality of the task")
            axis.set_title(_panel_title(benchmark, mode, show_mode))
        axes[0].set_ylabel("final accuracy (%)")
        _legend_below(figure, labels, kind="bar")
    return figure


def plot_modality_stream(runs: pd.DataFrame, benchmark: str, label: str = "comm", mode: str = "modality_aware",
                         scenario: str = "modality_incremental", max_seeds: int = 3) -> plt.Figure:
    """Accuracy on each modality's seen tasks after each task of a modality stream, one line per
    modality (:func:`mmcl.metrics.modality_accuracy_after_each_task`), for one method ``label``.

    The modality order is drawn from the seed, so seeds are not averaged: one panel per seed (the
    first ``max_seeds``), its x axis the seed's tasks. A modality that returns shows what its new
    task did to its earlier ones.
    """
    selected = runs[(runs["scenario"] == scenario) & (runs["benchmark"] == benchmark) & (runs["label"] == label)
                    & (runs["mode"] == mode)].sort_values("seed").head(max_seeds)
    if selected.empty:
        raise ValueError(f"no {label!r} runs of {scenario}/{benchmark} in mode {mode!r}")
    with paper_style():
        figure, axes = _figure(len(selected), 2.4)
        present: list[str] = []
        for axis, run in zip(axes, selected.itertuples()):
            order = list(run.modality_order)
            rows = metrics.modality_accuracy_after_each_task(run.accuracy_matrix, order)
            for modality in [m for m in MODALITY_ORDER if m in order] + sorted(set(order) - set(MODALITY_ORDER)):
                tasks = [i for i, row in enumerate(rows) if modality in row]
                axis.plot(tasks, [rows[i][modality] for i in tasks], marker="o", label=modality,
                          color=MODALITY_COLORS.get(modality, "#444444"))
                present += [modality] if modality not in present else []
            names = run.task_names or [str(i) for i in range(len(order))]
            axis.set_xticks(range(len(order)), names, rotation=45, ha="right")
            axis.set_ylim(0, 101)
            axis.set_xlabel("after task")
            axis.set_title(f"seed {run.seed}")
        figure.suptitle(f"{benchmark} · {label}: each modality's accuracy along the stream")
        axes[0].set_ylabel(f"modality accuracy (%)\n{results.MODE_TITLES.get(mode, mode)}")
        handles = [plt.Line2D([], [], color=MODALITY_COLORS.get(m, "#444444"), marker="o", label=m) for m in present]
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return figure


def plot_ablations(runs: pd.DataFrame, metric: str = "final_accuracy") -> plt.Figure:
    """Each method's ablation variants next to the full method: horizontal bars of ``metric``
    (mean over seeds, error bar ±1 std); one panel per (method, scenario, benchmark, mode)."""
    table = results.ablation_table(runs, [metric])
    if table.empty:
        raise ValueError("no ablation variants among these runs")
    keys = table[["method", "scenario", "benchmark", "mode"]].drop_duplicates().to_numpy().tolist()
    modes = list(results.MODE_TITLES)
    keys.sort(key=lambda k: (results.method_sort_key(k[0]), k[1], k[2], modes.index(k[3]) if k[3] in modes else 9))
    heights = [len(table[(table["method"] == k[0]) & (table["scenario"] == k[1]) & (table["benchmark"] == k[2])
                         & (table["mode"] == k[3])]) for k in keys]
    with paper_style():
        figure, axes = plt.subplots(len(keys), 1, figsize=(COLUMN_WIDTH, 0.55 * len(keys) + 0.22 * sum(heights)),
                                    squeeze=False, layout="constrained", height_ratios=heights)
        for axis, (method, scenario, benchmark, mode) in zip(axes[:, 0], keys):
            part = table[(table["method"] == method) & (table["scenario"] == scenario)
                         & (table["benchmark"] == benchmark) & (table["mode"] == mode)]
            # "full (train.epochs=1)" is the method's label "<method> (train.epochs=1)".
            labels = [method + v.removeprefix("full") if v.split(" (")[0] == "full" else results.method_label(method, v)
                      for v in part["variant"]]
            positions = np.arange(len(part))[::-1]
            means, stds = part[f"{metric}_mean"].to_numpy(float), part[f"{metric}_std"].to_numpy(float)
            axis.barh(positions, means, height=0.7, color=[method_color(label) for label in labels],
                      hatch=None, edgecolor="#333333", linewidth=0.4)
            # Hatches by position: distinct for every variant of this method, whatever their names.
            for k, bar in enumerate(axis.patches):
                bar.set_hatch("" if k == 0 else VARIANT_HATCHES[(k - 1) % len(VARIANT_HATCHES)])
            axis.errorbar(means, positions, xerr=np.nan_to_num(stds), fmt="none", ecolor="#333333",
                          elinewidth=0.7, capsize=1.5)
            names = ["full method" if v == "full" else f"{v}" for v in part["variant"]]
            seeds = part["seeds"].tolist()
            axis.set_yticks(positions, [f"{n} (n={s})" for n, s in zip(names, seeds)])
            axis.set_xlim(0, 100)
            axis.grid(axis="y", visible=False)
            axis.set_title(f"{method} · {_panel_title(benchmark, mode, mode != 'standard')}",
                           loc="left", color=method_color(method) if method != "zero-shot" else "#555555")
        axes[-1, 0].set_xlabel(f"{results.METRIC_HEADERS.get(metric, metric).lower()}")
    return figure


def write_figures(runs: pd.DataFrame, directory: str | Path) -> dict[str, list[Path]]:
    """Every figure of the paper that ``runs`` can support, as PNG + PDF under ``directory``.

    Names: ``accuracy_curves_<scenario>``, ``accuracy_matrix_<scenario>_<benchmark>[_<mode>]``,
    ``forgetting_<scenario>``, ``forgetting_decomposition_<scenario>`` (runs that hold it),
    ``modality_accuracy``, ``modality_stream_<benchmark>`` (COMM's runs), ``ablations_<method>``.
    Returns name -> paths.
    """
    written: dict[str, list[Path]] = {}

    def keep(name: str, figure: plt.Figure) -> None:
        try:
            written[name] = save_figure(figure, directory, name)
        finally:
            plt.close(figure)  # a refused write (DiskWriteError) leaves no figure open either

    base = runs[runs["variant"].isna()]
    for scenario in [s for s in results.SCENARIO_TITLES if s in set(base["scenario"])]:
        keep(f"accuracy_curves_{scenario}", plot_accuracy_curves(runs, scenario))
        keep(f"forgetting_{scenario}", plot_forgetting(runs, scenario))
        scenario_runs = runs[runs["scenario"] == scenario]
        if pd.to_numeric(scenario_runs["ncm_old_accuracy"], errors="coerce").notna().any():
            keep(f"forgetting_decomposition_{scenario}", plot_forgetting_decomposition(runs, scenario))
        for benchmark, mode in _panels(base[base["scenario"] == scenario]):
            suffix = "" if mode == "standard" else f"_{mode}"
            keep(f"accuracy_matrix_{scenario}_{benchmark}{suffix}", plot_accuracy_matrices(runs, scenario, benchmark, mode))
        if scenario == "modality_incremental":
            keep("modality_accuracy", plot_modality_accuracy(runs, scenario))
            comm = base[(base["scenario"] == scenario) & (base["label"] == "comm")]
            for benchmark in sorted(set(comm["benchmark"])):
                keep(f"modality_stream_{benchmark}", plot_modality_stream(runs, benchmark))
    # One ablation figure per method, each a single column wide.
    for method in results.sort_methods(runs.loc[runs["variant"].notna() & ~results.is_comparison(runs), "method"]):
        keep(f"ablations_{method}", plot_ablations(runs[runs["method"] == method]))
    return written


def plot_samples(benchmark, per_modality: int = 4) -> plt.Figure:
    """A few test samples of a benchmark (:class:`mmcl.data.benchmarks.Benchmark`), one row per
    modality, each of a different class: images as they enter the vision tower (video: the first
    frame; audio and inertial signals: their spectrogram image), text as the raw caption."""
    data = benchmark.test
    picks, seen = [], set()
    for index, label in enumerate(data.labels.tolist()):
        if label not in seen:
            seen.add(label)
            picks.append(index)
        if len(picks) == per_modality:
            break
    modalities = [m for m in MODALITY_ORDER if m in data.modalities]
    with paper_style():
        figure, axes = plt.subplots(len(modalities), len(picks), figsize=(TEXT_WIDTH * 0.6, 1.25 * len(modalities)),
                                    squeeze=False, layout="constrained")
        for row, modality in enumerate(modalities):
            for column, index in enumerate(picks):
                axis = axes[row, column]
                axis.set_xticks([])
                axis.set_yticks([])
                axis.grid(False)
                if modality == "text":
                    caption = data.texts["text"][index]
                    axis.text(0.5, 0.5, "\n".join(caption[i:i + 22] for i in range(0, len(caption), 22)),
                              ha="center", va="center", fontsize=6, wrap=True, transform=axis.transAxes)
                else:
                    pixels = data.inputs[modality][index]
                    pixels = pixels[0] if pixels.ndim == 4 else pixels  # video: first frame
                    axis.imshow(pixels.permute(1, 2, 0).numpy())  # as the tower sees it
                if row == 0:
                    axis.set_title(data.class_names[int(data.labels[index])], fontsize=6.5)
                if column == 0:
                    axis.set_ylabel(modality)
        figure.suptitle(f"{benchmark.name}: one test sample of {len(picks)} classes per modality")
    return figure
