"""The paper's figures, built only from the run DataFrame of :mod:`mmcl.results`.

One style for every figure (:func:`paper_style`): sized for a single column (3.4 in) or the
full text width (7 in), 8-pt fonts, grid behind the data, legends under the axes, PNG
(300 dpi) + PDF with embedded TrueType fonts.

What a figure highlights (:func:`method_styles`): each figure asks whether the paper's method beats
the best method of each kind. The scenario's paper method (:func:`scenario_papers`: COMM on
modality-incremental streams, the MoE adapters on class- and domain-incremental ones, as the
claims declare them) and the strongest method of each other family (rehearsal, prompt, prototype,
classic, fine-tuning, another paper; the highest mean final accuracy in the records the figure
draws) get colours: a paper method its own (:data:`PAPER_COLORS`), a family's best its family's
(:data:`FAMILY_COLORS`, Okabe-Ito, colour-blind safe), so a colour names the same kind of method in
every figure and no two series of a figure share one. Every other method is a thin grey line
named at its end (bar charts: a grey bar named on its axis); joint and zero-shot are reference
lines (dashed black, dotted grey). Legends list the highlighted methods by final accuracy, best
first. Ablation variants and fair comparisons (``method~variant``) appear only in the ablation
figures, each beside a reference line at its full method.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mmcl import metrics, results
from mmcl.atomic import atomic_write_bytes

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
TEXT_WIDTH = 7.0

# Okabe & Ito (2008), colour-blind safe: the two papers' methods in the two strongest hues.
PAPER_COLORS = {"comm": "#D55E00", "moe-adapters": "#0072B2"}
# The best method of each family, in its family's colour (Tol's "wine" for fine-tuning: Okabe-Ito's
# yellow is unreadable on white).
FAMILY_COLORS = {"rehearsal": "#009E73", "prompt": "#CC79A7", "prototype": "#E69F00", "classic": "#56B4E9",
                 "fine-tuning": "#882255"}
# Paul Tol's "muted" scheme: a family or paper method not named above takes the first one unused.
RESERVE_COLORS = ("#332288", "#44AA99", "#AA4499", "#661100", "#6699CC", "#DDCC77", "#117733")
OTHER_COLOR = "#BBBBBB"  # every method that is neither highlighted nor a reference
OTHER_TEXT_COLOR = "#555555"
# Reference methods are lines, so they read as bounds rather than competitors.
REFERENCE_STYLES = {"joint": ("#000000", "--"), "zero-shot": ("#777777", ":")}
REFERENCE_NAMES = {"joint": "joint (upper bound)", "zero-shot": "zero-shot (no training)"}
MODALITY_ORDER = ("image", "video", "audio", "depth", "acc", "gyro", "text")
END_LABEL_SIZE = 6.0  # points: the names of grey lines at their right end
BAR_HEIGHT = 0.135  # inches per bar of a horizontal bar chart: 7-pt names, one per bar
ERROR_BARS = {"fmt": "none", "ecolor": "#333333", "elinewidth": 0.6, "capsize": 1.5, "zorder": 4}


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn in a figure: ``role`` paper, rival (its family's best), reference or other."""

    role: str
    color: str
    legend: str
    linestyle: str = "-"
    linewidth: float = 0.8
    zorder: float = 1.0

    @property
    def highlighted(self) -> bool:
        return self.role != "other"


def scenario_papers(scenario: str) -> set[str]:
    """The paper methods whose claims are about ``scenario`` (:data:`mmcl.claims.CLAIMS`)."""
    from mmcl import claims  # scipy: only the figures that mark a paper's rivals need it

    return {claim.paper for claim in claims.CLAIMS
            if isinstance(claim, claims.RivalClaim) and scenario in claim.scenarios}


def strength(rows: pd.DataFrame, metric: str = "final_accuracy") -> pd.Series:
    """Label -> mean ``metric`` (mean over seeds per benchmark and mode, then over those), best first;
    ties by name, so the order is the same in every session."""
    values = rows.assign(_value=pd.to_numeric(rows[metric], errors="coerce"))
    means = values.groupby(["benchmark", "mode", "label"])["_value"].mean().groupby("label").mean()
    frame = pd.DataFrame({"value": means, "name": means.index})
    return frame.sort_values(["value", "name"], ascending=[not results.HIGHER_IS_BETTER.get(metric, True), True],
                             na_position="last")["value"]


def method_styles(rows: pd.DataFrame, scenario: str, papers: Sequence[str] | None = None) -> dict[str, MethodStyle]:
    """Label -> :class:`MethodStyle` for the methods of ``rows`` (the records a figure draws), in
    legend order: by final accuracy, best first (:func:`strength`).

    ``papers`` (default :func:`scenario_papers`) are drawn in their paper colour; of the other
    methods the best of each family (:func:`mmcl.results.method_family`; an unregistered method is a
    family of its own) in its family's colour; zero-shot and joint as reference lines; the rest grey.
    No two highlighted methods share a colour: a taken colour falls back to the first unused one of
    :data:`RESERVE_COLORS`."""
    papers = set(scenario_papers(scenario) if papers is None else papers)
    styles: dict[str, MethodStyle] = {}
    taken: set[str] = set()
    used = {color for color, _ in REFERENCE_STYLES.values()} | {OTHER_COLOR}
    for label in strength(rows).index:
        method = results.split_label(label)[0]
        family = results.method_family(method)
        if family == "reference":
            color, linestyle = REFERENCE_STYLES.get(method, ("#444444", "-."))
            styles[label] = MethodStyle("reference", color, REFERENCE_NAMES.get(method, label), linestyle, 1.1, 4.5)
            continue
        key = f"paper:{method}" if method in papers else f"family:{family or label}"
        if key in taken:
            styles[label] = MethodStyle("other", OTHER_COLOR, label)
            continue
        taken.add(key)
        color = PAPER_COLORS.get(method) if method in papers or family == "paper" else FAMILY_COLORS.get(family)
        if color is None or color in used:
            color = next((c for c in RESERVE_COLORS if c not in used), "#444444")
        used.add(color)
        if method in papers:
            styles[label] = MethodStyle("paper", color, f"{label} (paper)", "-", 2.0, 5)
        else:
            kind = "other paper" if family == "paper" else f"best {family}" if family else "unregistered"
            styles[label] = MethodStyle("rival", color, f"{label} ({kind})", "-", 1.3, 4)
    references = [label for label, style in styles.items() if style.role == "reference"]
    return {label: styles[label] for label in [*[x for x in styles if x not in references], *references]}


@contextmanager
def paper_style():
    """Matplotlib settings of every figure: small serif-free fonts, light grid, vector-friendly PDF."""
    rc = {
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "legend.title_fontsize": 7, "axes.linewidth": 0.6, "grid.linewidth": 0.4,
        "lines.linewidth": 1.4, "lines.markersize": 3.5, "pdf.fonttype": 42, "ps.fonttype": 42,
        "savefig.dpi": 300, "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
        "axes.axisbelow": True, "axes.titlecolor": "black", "figure.titlesize": 8.5,
    }
    interactive = matplotlib.is_interactive()
    try:
        with sns.axes_style("whitegrid", {"grid.color": "#e3e3e3"}), plt.rc_context(rc):
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


def _panel_title(benchmark: str, mode: str, show_mode: bool, narrow: bool = False) -> str:
    """"benchmark · mode" (the mode where a figure shows several); over a narrow panel on two lines."""
    if not show_mode:
        return benchmark
    return f"{benchmark}{chr(10) if narrow else ' · '}{results.MODE_TITLES.get(mode, mode)}"


def _too_wide(panels: list[tuple[str, str]], show_mode: bool, room: float) -> bool:
    """Whether the widest "benchmark · mode" title is wider than ``room`` inches (8 pt: about
    0.06 in a character): such titles go on two lines (:func:`_panel_title`)."""
    return show_mode and 0.06 * max(len(f"{b} · {results.MODE_TITLES.get(m, m)}") for b, m in panels) > room


def _panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = frame[["benchmark", "mode"]].drop_duplicates()
    modes = list(results.MODE_TITLES)
    return sorted(map(tuple, pairs.to_numpy()), key=lambda p: (p[0], modes.index(p[1]) if p[1] in modes else 9))


def _grid(panels: int, panel_width: float, height: float, columns: int | None = None, legend_entries: int = 0,
          **options):
    """A figure of ``panels`` axes in rows of at most ``columns`` (default: as many as fit the text
    width), each ``panel_width`` wide and ``height`` tall (inches, the panel's title and axis labels
    included), with room under them for a legend of ``legend_entries`` and above for a title;
    unused axes hidden. Returns (figure, list of the used axes)."""
    columns = max(1, min(panels, columns or int(TEXT_WIDTH // panel_width)))
    rows = -(-panels // columns)
    width = min(TEXT_WIDTH, max(COLUMN_WIDTH, panel_width * columns))
    legend_rows = -(-legend_entries // _legend_columns(width, 27))
    figure, axes = plt.subplots(rows, columns, figsize=(width, height * rows + 0.2 + 0.14 * legend_rows),
                                squeeze=False, layout="constrained", **options)
    for axis in axes.flat[panels:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:panels])


def _legend_columns(width: float, characters: int) -> int:
    """How many legend entries of ``characters`` fit side by side in ``width`` inches: an entry is
    about its handle and spacing (0.42 in) and 0.047 in per character of 7-pt text wide."""
    return max(1, min(4, int(width // (0.42 + 0.047 * characters))))


def _legend_below(figure: plt.Figure, styles: dict[str, MethodStyle], kind: str = "line") -> None:
    """One legend for the whole figure, under the axes, so it never covers data: the highlighted
    methods in ``styles``' order (best first), then the references; ``kind`` "bar": the methods as
    patches, the references still as lines."""
    handles = []
    for style in styles.values():
        if not style.highlighted:
            continue
        if kind == "bar" and style.role != "reference":
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=style.color, edgecolor="none", label=style.legend))
        else:
            handles.append(plt.Line2D([], [], color=style.color, linestyle=style.linestyle,
                                      linewidth=max(style.linewidth, 1.0),
                                      marker="o" if style.role != "reference" and kind == "line" else None,
                                      label=style.legend))
    _figure_legend(figure, handles)


def _figure_legend(figure: plt.Figure, handles: list) -> None:
    """A legend of ``handles`` under the axes of ``figure``, in as many balanced columns as fit its width."""
    if not handles:
        return
    estimate = _legend_columns(figure.get_figwidth(), max(len(handle.get_label()) for handle in handles))
    renderer = figure.canvas.get_renderer()
    for widest in range(estimate + 1, 0, -1):  # the most columns that fit the figure's width, measured
        rows = -(-len(handles) // widest)
        columns = -(-len(handles) // rows)  # balanced rows instead of one short last row
        legend = figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False,
                               handlelength=2.2, columnspacing=1.2)
        if widest == 1 or legend.get_window_extent(renderer).width <= figure.bbox.width - 4:
            return
        legend.remove()


def _spread(targets: Sequence[float], step: float, low: float, high: float) -> list[float]:
    """Positions for labels wanted at ``targets`` (one axis), at least ``step`` apart and within
    [low, high], each as near its target as the others allow: overlapping neighbours merge into a
    cluster centred on the mean of their targets."""
    order = np.argsort(targets, kind="stable")
    clusters = [[float(targets[i])] for i in order]

    def start(cluster: list[float]) -> float:
        span = (len(cluster) - 1) * step
        return float(np.clip(np.mean(cluster) - span / 2, low, max(low, high - span)))

    merged = True
    while merged:
        merged = False
        for k in range(len(clusters) - 1):
            if start(clusters[k]) + len(clusters[k]) * step > start(clusters[k + 1]) + 1e-9:
                clusters[k] += clusters.pop(k + 1)
                merged = True
                break
    placed = [start(cluster) + i * step for cluster in clusters for i in range(len(cluster))]
    positions = [0.0] * len(placed)
    for rank, index in enumerate(order):
        positions[index] = placed[rank]
    return positions


def _end_labels(figure: plt.Figure, axis: plt.Axes, ends: list[tuple[str, float, float]]) -> None:
    """Name each grey line (label, last x, last y) right of the axes, spread so no two names overlap,
    each joined to its line's end by a hairline."""
    if not ends:
        return
    figure.canvas.draw()  # the layout sets the axes' height, hence the spacing in data units
    low, high = axis.get_ylim()
    height_points = axis.get_window_extent().height * 72 / figure.dpi
    step = END_LABEL_SIZE * 1.3 * (high - low) / height_points
    positions = _spread([y for _, _, y in ends], step, low + step / 2, high - step / 2)
    for (label, x, y), position in zip(ends, positions):
        axis.annotate(label, xy=(x, y), xytext=(1.05, position), textcoords=axis.get_yaxis_transform(),
                      fontsize=END_LABEL_SIZE, color=OTHER_TEXT_COLOR, ha="left", va="center", annotation_clip=False,
                      arrowprops={"arrowstyle": "-", "color": OTHER_COLOR, "linewidth": 0.5, "shrinkA": 0,
                                  "shrinkB": 1})


def _main_rows(runs: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """The scenario's runs of the methods themselves: no ablation variant, no fair comparison (both
    ``method~variant``, drawn in the ablation figures)."""
    selected = runs[(runs["scenario"] == scenario) & runs["variant"].isna()]
    if selected.empty:
        raise ValueError(f"no runs of scenario {scenario!r}")
    return selected


def _emphasise_paper_ticks(labels: Sequence[plt.Text], styles: dict[str, MethodStyle]) -> None:
    for tick in labels:
        style = styles.get(tick.get_text())
        if style is not None and style.role == "paper":
            tick.set_fontweight("bold")


def plot_accuracy_curves(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Average accuracy on the seen tasks after each task, per method: mean over seeds (the paper
    method's band: ±1 std). One panel per (benchmark, evaluation mode) of ``scenario``; colours and
    line styles by :func:`method_styles`, grey lines named at their right end."""
    rows = _main_rows(runs, scenario)
    styles = method_styles(rows, scenario)
    curves = results.accuracy_curves(rows)
    panels = _panels(curves)
    show_mode = curves["mode"].nunique() > 1
    others = sum(not style.highlighted for style in styles.values())
    # The axes: tall enough to name every grey line at its end (END_LABEL_SIZE, 1.3 line spacing).
    with paper_style():
        figure, axes = _grid(len(panels), 3.5 if others else 3.4, 0.55 + max(1.35, 0.115 * others),
                             columns=min(len(panels), 2), legend_entries=len(styles) - others)
        ends: dict[int, list] = {}
        for number, (axis, (benchmark, mode)) in enumerate(zip(axes, panels)):
            data = curves[(curves["benchmark"] == benchmark) & (curves["mode"] == mode)]
            for label, style in styles.items():
                stats = data[data["label"] == label].groupby("task")["accuracy"].agg(["mean", "std"]).reset_index()
                if stats.empty:
                    continue
                axis.plot(stats["task"], stats["mean"], color=style.color, linestyle=style.linestyle,
                          linewidth=style.linewidth, zorder=style.zorder,
                          marker="o" if style.role in ("paper", "rival") else None,
                          label=label if style.highlighted else f"_{label}")
                if style.role == "paper" and stats["std"].notna().any():
                    spread = stats["std"].fillna(0)
                    axis.fill_between(stats["task"], stats["mean"] - spread, stats["mean"] + spread, color=style.color,
                                      alpha=0.15, linewidth=0, zorder=style.zorder - 0.5)
                if not style.highlighted:
                    ends.setdefault(number, []).append((label, stats["task"].iloc[-1], stats["mean"].iloc[-1]))
            tasks = sorted(data["task"].unique())
            axis.set_xticks(tasks)
            axis.set_xlim(tasks[0] - 0.1, tasks[-1] + 0.1)
            axis.set_ylim(0, 101)
            if number >= len(panels) - 2:  # the bottom row names the shared x axis
                axis.set_xlabel("tasks learned")
            axis.set_title(_panel_title(benchmark, mode, show_mode))
        for axis in axes[::2]:
            axis.set_ylabel("acc. on seen tasks (%)")
        _legend_below(figure, styles)
        for number, axis in enumerate(axes):
            _end_labels(figure, axis, ends.get(number, []))
    return figure


def plot_accuracy_matrices(runs: pd.DataFrame, scenario: str, benchmark: str | None = None,
                           mode: str | None = None) -> plt.Figure:
    """Heatmaps of the accuracy matrix ``A[i, j]`` (mean over seeds), one per method, best final
    accuracy first; the paper method's title in bold.

    Rows: after training task i; columns: evaluated task j; tasks not yet trained (j > i) are
    left blank. One shared colour scale, 0-100 %.
    """
    selected = _main_rows(runs, scenario)
    benchmark = benchmark or min(selected["benchmark"].unique())
    mode = mode or _panels(selected[selected["benchmark"] == benchmark])[0][1]
    selected = selected[(selected["benchmark"] == benchmark) & (selected["mode"] == mode)]
    styles = method_styles(selected, scenario)
    labels = list(styles)
    seeds = selected.groupby("label")["seed"].nunique()
    size = len(selected["accuracy_matrix"].iloc[0])
    panel = max(0.95, 0.24 * size + 0.45)  # inches per heatmap, its tick labels and title included
    columns = min(len(labels), max(1, int((TEXT_WIDTH - 0.7) // panel)))
    rows = -(-len(labels) // columns)
    with paper_style():
        figure, axes = plt.subplots(rows, columns, figsize=(min(TEXT_WIDTH, panel * columns + 0.7),
                                                            0.6 + (panel + 0.05) * rows),
                                    squeeze=False, layout="constrained")
        for axis in axes.flat[len(labels):]:
            axis.set_visible(False)
        image = None
        for number, (axis, label) in enumerate(zip(axes.flat, labels)):
            matrix, _ = results.mean_accuracy_matrix(selected[selected["label"] == label])
            masked = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), k=1), matrix)
            image = axis.imshow(masked, vmin=0, vmax=100, cmap="viridis", aspect="equal")
            for i in range(size):
                for j in range(i + 1):
                    axis.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=6 if size < 6 else 5,
                              color="black" if matrix[i, j] > 60 else "white")
            # Task numbers once per row / column (every matrix has the same tasks), under the last
            # matrix of each column and left of the first of each row.
            ticks, names = list(range(size)), [str(t + 1) for t in range(size)]
            bottom, left = number + columns >= len(labels), number % columns == 0
            axis.set_xticks(ticks, names, fontsize=6)
            axis.set_yticks(ticks, names, fontsize=6)
            axis.tick_params(length=1.5, pad=1, labelbottom=bottom, labelleft=left)
            axis.grid(False)
            title = label if seeds.nunique() == 1 else f"{label} (n={seeds[label]})"
            axis.set_title(title, fontsize=6.5, fontweight="bold" if styles[label].role == "paper" else "normal",
                           pad=2)
            if left:
                axis.set_ylabel("after task", fontsize=6.5, labelpad=1)
            if bottom:
                axis.set_xlabel("evaluated task", fontsize=6.5, labelpad=1)
        colorbar = figure.colorbar(image, ax=axes.ravel().tolist(), shrink=min(1.0, 0.9 / rows + 0.3), pad=0.01,
                                   aspect=15 * min(rows, 2))
        colorbar.set_label("accuracy (%)", fontsize=6.5)
        colorbar.ax.tick_params(labelsize=6)
        count = int(seeds.iloc[0])
        over = f"mean over {count} seed{'s' if count != 1 else ''}; " if seeds.nunique() == 1 else ""
        figure.suptitle(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: "
                        f"{_panel_title(benchmark, mode, mode != 'standard')}\n"
                        f"{over}methods by final accuracy, best first")
    return figure


def _ranked_bars(axis: plt.Axes, values: pd.DataFrame, styles: dict[str, MethodStyle], higher_is_better: bool,
                 references: Sequence[str] = ("joint",)) -> None:
    """Horizontal bars of ``values`` (columns label, value; one row per seed): mean over seeds,
    error bar ±1 std, best at the top; the methods in ``references`` as vertical lines instead."""
    stats = values.groupby("label")["value"].agg(["mean", "std"])
    competing = stats.loc[[label for label in stats.index if styles[label].role != "reference"]]
    order = competing.sort_values("mean", ascending=not higher_is_better, kind="stable").index.tolist()
    positions = np.arange(len(order))[::-1]
    for position, label in zip(positions, order):
        style = styles[label]
        axis.barh(position, stats.loc[label, "mean"], height=0.72, color=style.color, edgecolor="none", zorder=2,
                  label=label if style.highlighted else f"_{label}")
        if style.highlighted:  # a bar of about zero length still shows its colour
            axis.plot(stats.loc[label, "mean"], position, marker="|", markersize=6, markeredgewidth=1.6,
                      color=style.color, zorder=3, label=f"_{label} mean")
        if pd.notna(stats.loc[label, "std"]):
            axis.errorbar(stats.loc[label, "mean"], position, xerr=stats.loc[label, "std"], **ERROR_BARS)
    axis.set_yticks(positions, order)
    _emphasise_paper_ticks(axis.get_yticklabels(), styles)
    axis.set_ylim(-0.6, len(order) - 0.4)
    axis.grid(axis="y", visible=False)
    for label in references:
        if label in stats.index and pd.notna(stats.loc[label, "mean"]):
            style = styles[label]
            axis.axvline(stats.loc[label, "mean"], color=style.color, linestyle=style.linestyle, linewidth=1.0,
                         zorder=5, label=label)


def plot_forgetting(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Forgetting per method (mean over seeds, error bar ±1 std), least forgetting at the top, one
    panel per (benchmark, evaluation mode); joint's forgetting as a dashed reference line."""
    rows = _main_rows(runs, scenario)
    styles = method_styles(rows, scenario)
    panels = _panels(rows)
    show_mode = rows["mode"].nunique() > 1
    competing = sum(style.role != "reference" for style in styles.values())
    narrow = _too_wide(panels, show_mode, 2.33 - 0.9)  # the method names take about 0.9 in of a panel
    with paper_style():
        figure, axes = _grid(len(panels), 2.33, 0.65 + 0.13 * narrow + max(0.8, BAR_HEIGHT * competing), columns=3,
                             legend_entries=sum(style.role != "other" for style in styles.values()))
        for axis, (benchmark, mode) in zip(axes, panels):
            data = rows[(rows["benchmark"] == benchmark) & (rows["mode"] == mode)]
            _ranked_bars(axis, data.assign(value=pd.to_numeric(data["forgetting"], errors="coerce")), styles,
                         higher_is_better=False)
            axis.axvline(0, color="#333333", linewidth=0.5, zorder=1)
            axis.set_title(_panel_title(benchmark, mode, show_mode, narrow=narrow))
            axis.set_xlabel("forgetting (pp)")
        shown = {label: style for label, style in styles.items() if style.role != "reference" or label == "joint"}
        _legend_below(figure, shown, kind="bar")
        figure.suptitle(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: forgetting, lower is better")
    return figure


def plot_forgetting_decomposition(runs: pd.DataFrame, scenario: str) -> plt.Figure:
    """Why methods forget: per method, old-class accuracy after the last task read by its own
    classifier (solid bar) and by a nearest-class-mean probe on its representation (hatched bar of
    the same colour); mean over seeds, error bar ±1 std. Bars sorted by the own classifier's
    accuracy, lowest first; the reproduced papers' methods stand apart at the right, on a shaded
    band; joint and zero-shot (own classifier) as reference lines. One panel per (benchmark,
    evaluation mode) of ``scenario``, stacked. A probe bar far above its own bar: the representation
    still holds the old classes and the classifier lost them; both low: the representation forgot.

    Runs without the diagnostic are left out (silently: the table, :func:`mmcl.results.
    forgetting_decomposition_table`, says so in one line); ValueError when no run of ``scenario`` has it."""
    selected = results.decomposition_runs(runs[runs["scenario"] == scenario], warn=False)
    selected = selected[selected["variant"].isna()]
    if selected.empty:
        raise ValueError(f"no run of scenario {scenario!r} holds the forgetting decomposition")
    panels = _panels(selected)
    styles = method_styles(selected, scenario)
    others, papers = _decomposition_order(selected, styles)
    bars = others + papers
    band = len(others) + 0.6  # where the paper methods start: a gap before them
    positions = {label: float(k) for k, label in enumerate(others)}
    positions |= {label: band + k for k, label in enumerate(papers)}
    show_mode = selected["mode"].nunique() > 1
    references = [label for label, style in styles.items() if style.role == "reference"]
    with paper_style():
        figure, axes = plt.subplots(len(panels), 1, figsize=(min(TEXT_WIDTH, max(COLUMN_WIDTH, 1.4 + 0.36 * len(bars))),
                                                             0.9 + 1.5 * len(panels)),
                                    squeeze=False, sharex=True, layout="constrained")
        axes = list(axes[:, 0])
        for axis, (benchmark, mode) in zip(axes, panels):
            data = selected[(selected["benchmark"] == benchmark) & (selected["mode"] == mode)]
            _decomposition_panel(axis, data, styles, bars, positions, references, papers, band)
            axis.set_title(_panel_title(benchmark, mode, show_mode), loc="left")
            if papers:
                axis.text(band + (len(papers) - 1) / 2, 1.0, "paper methods", ha="center",
                          va="bottom", fontsize=6.5, color="#555555", transform=axis.get_xaxis_transform())
        axes[-1].set_xticks([positions[label] for label in bars], bars, rotation=45, ha="right")
        _emphasise_paper_ticks(axes[-1].get_xticklabels(), styles)
        axes[-1].set_xlim(-0.6, max(positions.values()) + 0.6)
        _figure_legend(figure, _decomposition_handles(styles, references))
        figure.suptitle(f"{results.SCENARIO_TITLES.get(scenario, scenario)}: old-class accuracy after the last task")
    return figure


def _decomposition_order(selected: pd.DataFrame, styles: dict[str, MethodStyle]) -> tuple[list[str], list[str]]:
    """(other methods, paper methods): the bars of the forgetting decomposition, each part sorted
    by the own classifier's old-class accuracy (mean over panels), lowest first; no references."""
    own = selected.assign(_own=pd.to_numeric(selected["own_old_accuracy"], errors="coerce"))
    ranking = own.groupby(["benchmark", "mode", "label"])["_own"].mean().groupby("label").mean().sort_values(
        kind="stable")
    bars = [label for label in ranking.index if styles[label].role != "reference"]
    others = [label for label in bars if not results.is_paper_method(results.split_label(label)[0])]
    return others, [label for label in bars if label not in others]


def _decomposition_panel(axis: plt.Axes, data: pd.DataFrame, styles: dict[str, MethodStyle], bars: list[str],
                         positions: dict[str, float], references: list[str], papers: list[str], band: float) -> None:
    """One panel of :func:`plot_forgetting_decomposition`: the paper methods' shaded band (from
    ``band``), each method's own and probe bars (n/a where it has none), the reference lines."""
    if papers:
        axis.axvspan(band - 0.5, band + len(papers) - 0.5, color="#f2f2f2", zorder=0, linewidth=0)
    width = 0.38
    for label in bars:
        values = data[data["label"] == label]
        if values.empty:  # not run here, or no representation in this mode (MoE adapters, agnostic)
            axis.text(positions[label], 2, "n/a", ha="center", va="bottom", fontsize=6, color="#777777")
            continue
        color = styles[label].color
        for offset, column, hatch, face in ((-width / 2, "own_old_accuracy", "", color),
                                            (width / 2, "ncm_old_accuracy", "////", "white")):
            numbers = values[column].astype(float)
            axis.bar(positions[label] + offset, numbers.mean(), width=width, color=face, edgecolor=color,
                     linewidth=0.8, hatch=hatch, zorder=2)
            if len(numbers) > 1:
                axis.errorbar(positions[label] + offset, numbers.mean(), yerr=numbers.std(ddof=1), **ERROR_BARS)
    for label in references:
        numbers = pd.to_numeric(data.loc[data["label"] == label, "own_old_accuracy"], errors="coerce")
        if numbers.notna().any():
            axis.axhline(numbers.mean(), color=styles[label].color, linestyle=styles[label].linestyle,
                         linewidth=1.0, zorder=3, label=label)
    axis.set_ylim(0, 105)
    axis.set_ylabel("old-class acc. (%)")


def _decomposition_handles(styles: dict[str, MethodStyle], references: list[str]) -> list:
    """The legend of :func:`plot_forgetting_decomposition`: the two bar kinds, then the references."""
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="#444444", edgecolor="#444444", label="own classifier"),
               plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="#444444", hatch="////",
                             label="NCM probe on its representation")]
    return handles + [plt.Line2D([], [], color=styles[label].color, linestyle=styles[label].linestyle,
                                 label=f"{styles[label].legend}, own classifier") for label in references]


def plot_modality_accuracy(runs: pd.DataFrame, scenario: str = "modality_incremental") -> plt.Figure:
    """Final accuracy on each modality's tasks: the paper method and the best of each family (bars
    in the legend's order, mean over seeds, error bar ±1 std), joint and zero-shot as reference
    segments over each modality; one panel per (benchmark, evaluation mode)."""
    rows = _main_rows(runs, scenario)
    styles = method_styles(rows, scenario)
    data = results.modality_accuracy(rows).rename(columns={"accuracy": "value"})
    if data.empty:
        raise ValueError("no per-modality accuracy in these runs")
    panels = _panels(data)
    present = set(data["modality"])
    modalities = [m for m in MODALITY_ORDER if m in present] + sorted(present - set(MODALITY_ORDER))
    bars = [label for label, style in styles.items() if style.role in ("paper", "rival")]
    references = [label for label, style in styles.items() if style.role == "reference"]
    show_mode = data["mode"].nunique() > 1
    width = 0.8 / max(len(bars), 1)
    with paper_style():
        columns = 2 if len(panels) in (2, 4) else 3
        panel_width = max(2.3, 0.5 + 0.16 * len(bars) * len(modalities))
        narrow = _too_wide(panels, show_mode, panel_width - 0.6)
        figure, axes = _grid(len(panels), panel_width, 1.9 + 0.13 * narrow, columns=columns,
                             legend_entries=len(bars) + len(references))
        for number, (axis, (benchmark, mode)) in enumerate(zip(axes, panels)):
            panel = data[(data["benchmark"] == benchmark) & (data["mode"] == mode)]
            for k, label in enumerate(bars):
                stats = panel[panel["label"] == label].groupby("modality")["value"].agg(["mean", "std"])
                positions = [g + (k - (len(bars) - 1) / 2) * width for g in range(len(modalities))]
                means = [stats["mean"].get(m, np.nan) for m in modalities]
                axis.bar(positions, means, width=width * 0.92, color=styles[label].color, edgecolor="none",
                         zorder=2, label=label)
                axis.errorbar(positions, means, yerr=[stats["std"].get(m, np.nan) for m in modalities], **ERROR_BARS)
            for label in references:
                stats = panel[panel["label"] == label].groupby("modality")["value"].mean()
                for g, modality in enumerate(modalities):
                    if pd.notna(stats.get(modality, np.nan)):
                        axis.hlines(stats[modality], g - 0.45, g + 0.45, color=styles[label].color,
                                    linestyle=styles[label].linestyle, linewidth=1.1, zorder=5,
                                    label=label if g == 0 else f"_{label}")
            axis.set_xticks(range(len(modalities)), modalities)
            axis.set_xlim(-0.5, len(modalities) - 0.5)
            axis.set_ylim(0, 105)
            axis.grid(axis="x", visible=False)
            if number >= len(panels) - columns:
                axis.set_xlabel("modality of the task")
            axis.set_title(_panel_title(benchmark, mode, show_mode, narrow=narrow))
        for axis in axes[::columns]:
            axis.set_ylabel("final accuracy (%)")
        _legend_below(figure, {label: styles[label] for label in [*bars, *references]}, kind="bar")
    return figure


def plot_modality_stream(runs: pd.DataFrame, benchmark: str, label: str = "comm", mode: str = "modality_aware",
                         scenario: str = "modality_incremental", max_seeds: int = 3) -> plt.Figure:
    """Accuracy on each modality's seen tasks after each task of a modality stream
    (:func:`mmcl.metrics.modality_accuracy_after_each_task`): the paper method ``label`` against the
    best method of each family on this benchmark and mode (:func:`method_styles`), joint dashed.

    The modality order is drawn from the seed, so only seeds of the same order are averaged: one row
    of panels per order (those of the first ``max_seeds`` of ``label``'s seeds), one panel per
    modality, the x axis the order's tasks named by their modality (the panel's own in bold). A
    modality met only in the last task is left out (one point says nothing about a stream), unless
    every one is. A modality that returns shows what its new task did to its earlier ones.
    """
    selected = runs[(runs["scenario"] == scenario) & (runs["benchmark"] == benchmark) & (runs["mode"] == mode)
                    & runs["variant"].isna()]
    own = selected[selected["label"] == label].sort_values("seed").head(max_seeds)
    if own.empty:
        raise ValueError(f"no {label!r} runs of {scenario}/{benchmark} in mode {mode!r}")
    styles = {name: style for name, style in method_styles(selected, scenario, papers=[label]).items()
              if style.highlighted}
    orders: dict[tuple[str, ...], list[int]] = {}
    for seed, order in zip(own["seed"], own["modality_order"]):
        orders.setdefault(tuple(order), []).append(int(seed))
    modalities = _streamed_modalities(orders)
    legend_rows = -(-len(styles) // 3)
    with paper_style():
        # At least 5.4 in wide: the legend's three columns of "method (best family)".
        figure, axes = plt.subplots(len(orders), len(modalities),
                                    figsize=(min(TEXT_WIDTH, max(5.4, 0.6 + 2.1 * len(modalities))),
                                             0.75 + (1.6 if len(orders) > 1 else 1.9) * len(orders)
                                             + 0.14 * legend_rows),
                                    squeeze=False, sharey=True, layout="constrained")
        for row, (order, seeds) in enumerate(orders.items()):
            _plot_stream_row(axes[row], selected[selected["seed"].isin(seeds)], styles, order, modalities)
            _label_stream_row(axes[row], order, seeds, modalities, first=row == 0, last=row == len(orders) - 1,
                              several=len(orders) > 1)
        over = "" if len(orders) > 1 else f" (mean of seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        figure.suptitle(f"{benchmark} · {results.MODE_TITLES.get(mode, mode)}: accuracy per modality{over}")
        _legend_below(figure, styles)
    return figure


def _streamed_modalities(orders: dict[tuple[str, ...], list[int]]) -> list[str]:
    """The modalities of ``orders`` in the house order, without those met only in a last task (unless all are)."""
    present = {m for order in orders for m in order}
    modalities = [m for m in MODALITY_ORDER if m in present] + sorted(present - set(MODALITY_ORDER))
    streamed = [m for m in modalities if any(order.index(m) < len(order) - 1 for order in orders)]
    return streamed or modalities


def _plot_stream_row(axes: Sequence[plt.Axes], rows: pd.DataFrame, styles: dict[str, MethodStyle],
                     order: tuple[str, ...], modalities: list[str]) -> None:
    """Each method's accuracy on each modality's seen tasks along ``order`` (mean over the seeds of ``rows``)."""
    for name, style in styles.items():
        matrices = rows.loc[rows["label"] == name, "accuracy_matrix"]
        if matrices.empty:
            continue
        accuracy = metrics.modality_accuracy_after_each_task(
            results.mean_accuracy_matrix(pd.DataFrame({"accuracy_matrix": list(matrices)}))[0], list(order))
        for column, modality in enumerate(modalities):
            tasks = [i for i, values in enumerate(accuracy) if modality in values]
            axes[column].plot([t + 1 for t in tasks], [accuracy[t][modality] for t in tasks],
                              color=style.color, linestyle=style.linestyle, linewidth=style.linewidth,
                              zorder=style.zorder, marker="o" if style.role != "reference" else None, label=name)


def _label_stream_row(axes: Sequence[plt.Axes], order: tuple[str, ...], seeds: list[int], modalities: list[str],
                      first: bool, last: bool, several: bool) -> None:
    """Ticks (the panel's own modality in bold), limits, titles (``first`` row), the y label (with
    the row's seeds when there are ``several`` rows) and the x label (``last`` row)."""
    for column, modality in enumerate(modalities):
        axis = axes[column]
        axis.set_xticks(range(1, len(order) + 1), order)
        for tick, task_modality in zip(axis.get_xticklabels(), order):
            tick.set_fontweight("bold" if task_modality == modality else "normal")
        axis.set_xlim(0.8, len(order) + 0.2)
        axis.set_ylim(0, 101)
        if first:
            axis.set_title(f"{modality} tasks")
        if column == 0:
            seeds_text = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            axis.set_ylabel(f"{seeds_text}\naccuracy (%)" if several else "accuracy (%)")
        if last:
            axis.set_xlabel("after the task of")


def _ablation_color(method: str) -> str:
    family = results.method_family(method)
    return PAPER_COLORS.get(method) or FAMILY_COLORS.get(family or "", "#6f6f6f")


def plot_ablations(runs: pd.DataFrame, metric: str = "final_accuracy") -> plt.Figure:
    """Each method's ablation variants and fair comparisons (``method~variant``, the latter named
    "(comparison)") against the full method: horizontal bars of ``metric`` (mean over seeds, error
    bar ±1 std), best at the top, and a dashed reference line at the full method (its ±1 std
    shaded); one panel per (method, scenario, benchmark, mode)."""
    # Fair comparisons are variants here: the ablation figures are where every "~" run is drawn.
    table = results.ablation_table(runs.assign(role=None), [metric])
    compared = set(runs.loc[results.is_comparison(runs), "variant"])
    if table.empty:
        raise ValueError("no ablation variants among these runs")
    keys = table[["method", "scenario", "benchmark", "mode"]].drop_duplicates().to_numpy().tolist()
    modes, scenarios = list(results.MODE_TITLES), list(results.SCENARIO_TITLES)
    keys.sort(key=lambda k: (results.method_sort_key(k[0]), scenarios.index(k[1]) if k[1] in scenarios else 9, k[2],
                             modes.index(k[3]) if k[3] in modes else 9))
    parts = [table[(table["method"] == k[0]) & (table["scenario"] == k[1]) & (table["benchmark"] == k[2])
                   & (table["mode"] == k[3])] for k in keys]
    is_full = [part["variant"].str.split(" (", regex=False).str[0] == "full" for part in parts]
    heights = [max(1, int((~full).sum())) for full in is_full]
    higher = results.HIGHER_IS_BETTER.get(metric, True)
    seeds = set(table["seeds"])
    methods = list(dict.fromkeys(k[0] for k in keys))
    with paper_style():
        figure, axes = plt.subplots(len(keys), 1, figsize=(COLUMN_WIDTH, 0.75 + 0.3 * len(keys)
                                                           + BAR_HEIGHT * 1.1 * sum(heights)),
                                    squeeze=False, sharex=True, layout="constrained",
                                    height_ratios=[h + 0.6 for h in heights])
        for axis, (method, scenario, benchmark, mode), part, full_rows in zip(axes[:, 0], keys, parts, is_full):
            full = part[full_rows]
            variants = part[~full_rows].sort_values(f"{metric}_mean", ascending=not higher, kind="stable")
            positions = np.arange(len(variants))[::-1]
            means, stds = variants[f"{metric}_mean"].to_numpy(float), variants[f"{metric}_std"].to_numpy(float)
            axis.barh(positions, means, height=0.7, color=_ablation_color(method), edgecolor="none", zorder=2,
                      label=f"_{method} variants")
            axis.errorbar(means, positions, xerr=np.nan_to_num(stds), **ERROR_BARS)
            names = [v + (" (comparison)" if v in compared else "") + (f" (n={n})" if len(seeds) > 1 else "")
                     for v, n in zip(variants["variant"], variants["seeds"])]
            axis.set_yticks(positions, names)
            if len(full):
                mean, std = float(full[f"{metric}_mean"].iloc[0]), float(full[f"{metric}_std"].iloc[0])
                if not np.isnan(std):
                    axis.axvspan(mean - std, mean + std, color="#e6e6e6", zorder=1, linewidth=0)
                axis.axvline(mean, color="black", linestyle="--", linewidth=1.0, zorder=5, label="full method")
            axis.set_xlim(0, 100)
            axis.set_ylim(-0.6, max(len(variants), 1) - 0.4)
            axis.grid(axis="y", visible=False)
            title = (f"{results.SCENARIO_TITLES.get(scenario, scenario)} · "
                     f"{_panel_title(benchmark, mode, mode != 'standard')}")
            # From the figure's left edge, over the variant names: a long title then still fits the column.
            axis.annotate(title if len(methods) == 1 else f"{method} · {title}", xy=(0.0, 1.0), xytext=(0, 3),
                          xycoords=("figure fraction", "axes fraction"), textcoords="offset points", fontsize=7,
                          ha="left", va="bottom", annotation_clip=False)
        axes[-1, 0].set_xlabel(f"{results.METRIC_HEADERS.get(metric, metric).lower()}")
        over = f", {next(iter(seeds))} seed{'s' if next(iter(seeds)) != 1 else ''}" if len(seeds) == 1 else ""
        figure.suptitle(f"{methods[0] if len(methods) == 1 else 'Ablations'}: variants vs full method{over}")
        _figure_legend(figure, [plt.Line2D([], [], color="black", linestyle="--", label="full method"),
                                plt.Rectangle((0, 0), 1, 1, facecolor="#e6e6e6", label="full method ±1 std")])
    return figure


def write_figures(runs: pd.DataFrame, directory: str | Path) -> dict[str, list[Path]]:
    """Every figure of the paper that ``runs`` can support, as PNG + PDF under ``directory``.

    Names: ``accuracy_curves_<scenario>``, ``accuracy_matrix_<scenario>_<benchmark>[_<mode>]``,
    ``forgetting_<scenario>``, ``forgetting_decomposition_<scenario>`` (runs that hold it),
    ``modality_accuracy``, ``modality_stream_<benchmark>`` (COMM's runs), ``ablations_<method>``
    (a method with ablation variants or fair comparisons). Returns name -> paths.
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
        scenario_runs = base[base["scenario"] == scenario]
        if pd.to_numeric(scenario_runs["ncm_old_accuracy"], errors="coerce").notna().any():
            keep(f"forgetting_decomposition_{scenario}", plot_forgetting_decomposition(runs, scenario))
        for benchmark, mode in _panels(scenario_runs):
            suffix = "" if mode == "standard" else f"_{mode}"
            keep(f"accuracy_matrix_{scenario}_{benchmark}{suffix}", plot_accuracy_matrices(runs, scenario, benchmark, mode))
        if scenario == "modality_incremental":
            keep("modality_accuracy", plot_modality_accuracy(runs, scenario))
            comm = scenario_runs[scenario_runs["label"] == "comm"]
            for benchmark in sorted(set(comm["benchmark"])):
                keep(f"modality_stream_{benchmark}", plot_modality_stream(runs, benchmark))
    # One ablation figure per method, each a single column wide.
    for method in results.sort_methods(runs.loc[runs["variant"].notna(), "method"]):
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
