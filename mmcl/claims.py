"""The papers' claims, checked against run records with paired statistics.

Each claim of each paper is data (:data:`CLAIMS`): a paper method beats its rivals on a metric
(:class:`RivalClaim`), or removing one of its components lowers final accuracy
(:class:`AblationClaim`). :func:`claims_table` measures every claim on every benchmark of its
scenarios (appendix benchmarks left out) and in every evaluation mode, against every rival the
runs hold, and gives a verdict computed from a paired 95 % t-interval:

- ``holds``: the interval excludes 0 on the claimed side;
- ``not supported``: the interval contains 0;
- ``reversed``: the interval excludes 0 on the other side;
- ``no data``: fewer than two seeds that both runs have.

Comparisons are paired by seed: a seed fixes the class (or modality) order of the stream, so both
methods of a pair saw the same stream. :func:`paired_difference` gives the mean difference, its
sample std, the t-interval, a percentile bootstrap interval (fixed RNG seed) and the two-sided
p-value of the paired t-test.

:func:`write_claims` writes ``claims.csv`` and ``claims.md``; :func:`update_docs` rewrites the
generated block of each paper method's doc page (between ``<!-- claims:<method>:start -->`` and
``<!-- claims:<method>:end -->``) from ``claims.csv``, and nothing else of the page.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mmcl import results
from mmcl.atomic import atomic_write_text

VERDICTS = ("holds", "not supported", "reversed", "no data")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Methods that are bounds, not rivals: a paper does not claim to beat joint training or zero-shot.
NOT_RIVALS = ("reference",)


@dataclass(frozen=True)
class RivalClaim:
    """``paper`` beats every rival on ``metric`` (higher when ``higher``, else lower) in each of
    ``scenarios``, in each evaluation mode of ``modes`` (None: every mode of its runs)."""

    paper: str
    text: str
    scenarios: tuple[str, ...]
    metric: str
    higher: bool
    modes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AblationClaim:
    """Removing ``component`` (the ablation ``variant`` of ``paper``) lowers final accuracy:
    full method minus variant > 0."""

    paper: str
    variant: str
    component: str
    metric: str = "final_accuracy"
    higher: bool = True

    @property
    def text(self) -> str:
        return f"{self.component} helps (`{self.variant}` lowers {results.METRIC_HEADERS[self.metric].lower()})"


_MOE = "moe-adapters"
_MOE_SCENARIOS = ("class_incremental", "domain_incremental")
_COMM_MODES = ("modality_aware", "modality_agnostic")

# The claims as docs/methods/{moe_adapters,comm}.md state them ("Claims" sections).
CLAIMS: tuple[RivalClaim | AblationClaim, ...] = (
    RivalClaim(_MOE, "higher final accuracy than each baseline", _MOE_SCENARIOS, "final_accuracy", True),
    RivalClaim(_MOE, "lower forgetting than each baseline", _MOE_SCENARIOS, "forgetting", False),
    AblationClaim(_MOE, "no-kd", "distillation"),
    AblationClaim(_MOE, "no-align", "representation alignment"),
    AblationClaim(_MOE, "no-relation", "relation preservation"),
    AblationClaim(_MOE, "single-adapter", "the mixture of experts (vs one adapter)"),
    AblationClaim(_MOE, "no-expert-freezing", "expert freezing"),
    AblationClaim(_MOE, "no-cross-attention", "cross-modality attention"),
    RivalClaim("comm", "higher final accuracy than each baseline", ("modality_incremental",), "final_accuracy",
               True, _COMM_MODES),
    RivalClaim("comm", "higher average incremental accuracy than each baseline", ("modality_incremental",),
               "average_incremental_accuracy", True, _COMM_MODES),
    RivalClaim("comm", "lower forgetting than each baseline", ("modality_incremental",), "forgetting", False,
               _COMM_MODES),
    AblationClaim("comm", "no-self-regularisation", "self-regularisation"),
    AblationClaim("comm", "no-blending-current", "relevance-guided blending (vs the known pool only)"),
    AblationClaim("comm", "no-blending-uniform", "relevance-guided blending (vs uniform blending)"),
    AblationClaim("comm", "no-realignment", "Gaussian re-alignment"),
    AblationClaim("comm", "shared-pool", "modality-specific pools (vs one shared pool)"),
)

COLUMNS = ["paper", "claim", "scenario", "benchmark", "mode", "metric", "rival", "direction", "n", "seeds",
           "effect", "effect_std", "t_low", "t_high", "p_value", "bootstrap_low", "bootstrap_high", "verdict",
           "profile", "code"]


# ------------------------------------------------------------------------------- statistics
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf(probability, df))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                      resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = BOOTSTRAP_SEED) -> dict:
    """Paired comparison of ``a`` and ``b`` (same length, pair k = seed k): the differences
    ``d = a − b``, their mean and sample std (ddof 1), the ``confidence`` t-interval
    ``mean ± t_{(1+c)/2, n−1} · std/√n``, a percentile bootstrap interval of the mean (``resamples``
    resamples of the n pairs with replacement, ``numpy.random.default_rng(rng_seed)``) and the
    two-sided p-value of the paired t-test. With fewer than 2 pairs everything but ``n`` and the
    mean is NaN; with all differences equal the intervals are that value and p is 0 (1 if it is 0).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "std": math.nan, "t_low": math.nan,
           "t_high": math.nan, "p_value": math.nan, "bootstrap_low": math.nan, "bootstrap_high": math.nan}
    if n < 2:
        return out
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    if std == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * stats.t.sf(abs(mean / (std / math.sqrt(n))), n - 1))
    rng = np.random.default_rng(rng_seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    out.update(std=std, t_low=mean - half, t_high=mean + half, p_value=p_value,
               bootstrap_low=float(low), bootstrap_high=float(high))
    return out


def verdict(low: float, high: float, higher: bool) -> str:
    """``holds`` / ``not supported`` / ``reversed`` from an interval of (paper − rival) and the
    claimed direction; ``no data`` when the interval is undefined."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "no data"
    if low > 0:
        return "holds" if higher else "reversed"
    if high < 0:
        return "reversed" if higher else "holds"
    return "not supported"


# ------------------------------------------------------------------------------- claims table
def method_info(method: str) -> tuple[str, dict]:
    """(family, comparison variants) of a registered method; ("", {}) for an unknown one.

    ``family`` is the method's ``family`` ClassVar (classic, rehearsal, prompt, adapter, paper,
    reference); ``comparisons`` its named comparison variants (a ``comparisons`` ClassVar, if the
    method declares one), which are rivals like any baseline.
    """
    from mmcl.methods import REGISTRY

    cls = REGISTRY.get(method)
    if cls is None:
        return "", {}
    return getattr(cls, "family", ""), dict(getattr(cls, "comparisons", {}) or {})


def rival_labels(runs: pd.DataFrame, paper: str, info=method_info) -> list[str]:
    """The rivals of ``paper`` among ``runs``' labels: every other method's base run and its
    comparison variants, and the paper method's own comparison variants; not ablation variants,
    not references (joint, zero-shot), not runs of a configuration other than the profile's."""
    rivals = []
    for label in runs["label"].unique():
        method, variant, difference = results.label_parts(label)
        if difference:
            continue
        family, comparisons = info(method)
        if variant is not None and variant not in comparisons:
            continue
        if (method == paper and variant is None) or family in NOT_RIVALS:
            continue
        rivals.append(label)
    return results.sort_methods(rivals)


def _metric_by_seed(runs: pd.DataFrame, label: str, metric: str) -> pd.Series:
    rows = runs[runs["label"] == label]
    return pd.Series(pd.to_numeric(rows[metric], errors="coerce").to_numpy(), index=rows["seed"].to_numpy()).dropna()


def _row(claim, scenario, benchmark, mode, rival, paper_values: pd.Series | None, rival_values: pd.Series | None,
         group: pd.DataFrame | None) -> dict:
    """One claims row: the paired comparison of ``paper_values`` and ``rival_values`` (by seed)."""
    common = sorted(set(paper_values.index) & set(rival_values.index)) if paper_values is not None \
        and rival_values is not None else []
    stats_ = paired_difference(paper_values.loc[common].to_numpy() if common else [],
                               rival_values.loc[common].to_numpy() if common else [])
    used = group[group["seed"].isin(common)] if group is not None and common else None
    return {"paper": claim.paper, "claim": claim.text, "scenario": scenario, "benchmark": benchmark, "mode": mode,
            "metric": claim.metric, "rival": rival, "direction": "> 0" if claim.higher else "< 0",
            "n": stats_["n"], "seeds": " ".join(str(s) for s in common),
            "effect": stats_["mean"], "effect_std": stats_["std"], "t_low": stats_["t_low"],
            "t_high": stats_["t_high"], "p_value": stats_["p_value"], "bootstrap_low": stats_["bootstrap_low"],
            "bootstrap_high": stats_["bootstrap_high"],
            "verdict": verdict(stats_["t_low"], stats_["t_high"], claim.higher),
            "profile": None if group is None or group.empty else group["profile"].iloc[0],
            "run_versions": results._run_versions(used) if used is not None and not used.empty else ()}


def claims_table(runs: pd.DataFrame, appendix: Mapping[str, Sequence[str]] | None = None,
                 claims: Sequence[RivalClaim | AblationClaim] = CLAIMS, info=method_info) -> pd.DataFrame:
    """Every claim of ``claims`` measured on ``runs``, one row per (claim, scenario, benchmark,
    mode, rival); columns :data:`COLUMNS` plus ``run_versions``.

    ``effect`` is paper − rival (for an ablation: full method − variant), ``direction`` the claimed
    sign; ``n`` and ``seeds`` the seeds both have. Benchmarks of ``appendix`` (scenario -> names)
    are left out. A scenario without runs gives one ``no data`` row; a rival or variant without a
    common seed gives a ``no data`` row, as does a single common seed.
    """
    appendix = appendix or {}
    rows = []
    if not runs.empty:
        results.single_profile(runs)
    main_runs = runs[[b not in appendix.get(s, ()) for s, b in zip(runs["scenario"], runs["benchmark"])]]
    for claim in claims:
        # An ablation claim is measured where the paper method was run (None: nowhere, no data).
        scenarios = claim.scenarios if isinstance(claim, RivalClaim) else \
            sorted(set(main_runs.loc[main_runs["method"] == claim.paper, "scenario"]),
                   key=list(results.SCENARIO_TITLES).index) or [None]
        for scenario in scenarios:
            in_scenario = main_runs[main_runs["scenario"] == scenario]
            benchmarks = sorted(in_scenario["benchmark"].unique())
            if not benchmarks:
                rows.append(_row(claim, scenario, None, None, None, None, None, None))
                continue
            for benchmark in benchmarks:
                on_benchmark = in_scenario[in_scenario["benchmark"] == benchmark]
                modes = claim.modes if getattr(claim, "modes", None) else \
                    sorted(on_benchmark["mode"].unique(), key=lambda m: list(results.MODE_TITLES).index(m))
                for mode in modes:
                    group = on_benchmark[on_benchmark["mode"] == mode]
                    paper = _metric_by_seed(group, claim.paper, claim.metric)
                    if isinstance(claim, AblationClaim):
                        label = f"{claim.paper}~{claim.variant}"
                        rows.append(_row(claim, scenario, benchmark, mode, label, paper,
                                         _metric_by_seed(group, label, claim.metric),
                                         group[group["label"].isin([claim.paper, label])]))
                        continue
                    rivals = rival_labels(group, claim.paper, info)
                    for rival in rivals or [None]:
                        rival_values = _metric_by_seed(group, rival, claim.metric) if rival else None
                        rows.append(_row(claim, scenario, benchmark, mode, rival, paper, rival_values,
                                         group[group["label"].isin([claim.paper, rival])]))
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "code"] + ["run_versions"])
    table["code"] = ["; ".join(sorted({v for _, v in pairs})) for pairs in table["run_versions"]]
    return table[[*COLUMNS, "run_versions"]]


# ------------------------------------------------------------------------------- writing
def _number(value: float, decimals: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = round(float(value), decimals) + 0.0
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _interval(low: float, high: float) -> str:
    if low is None or math.isnan(low):
        return "–"
    return f"[{_number(low, signed=True)}, {_number(high, signed=True)}]"


def _p_text(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def display_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as shown in Markdown: effects and intervals in points, rounded."""
    return pd.DataFrame({
        "Claim": table["claim"],
        "Scenario": [results.SCENARIO_TITLES.get(s, s or "–") for s in table["scenario"]],
        "Benchmark": [b or "–" for b in table["benchmark"]],
        "Mode": [results.MODE_TITLES.get(m, m or "–") for m in table["mode"]],
        "Rival": [r or "–" for r in table["rival"]],
        "n": table["n"],
        "Effect (pp)": [f"{_number(e, signed=True)}" + ("" if math.isnan(s) else f" ± {_number(s)}")
                        for e, s in zip(table["effect"], table["effect_std"])],
        "Claimed": table["direction"],
        "95 % t-interval": [_interval(lo, hi) for lo, hi in zip(table["t_low"], table["t_high"])],
        "95 % bootstrap": [_interval(lo, hi) for lo, hi in zip(table["bootstrap_low"], table["bootstrap_high"])],
        "p": [_p_text(p) for p in table["p_value"]],
        "Verdict": table["verdict"],
    })


EXPLANATION = (
    "Effect: paper method − rival (ablation: full method − variant), mean ± sample std of the per-seed "
    "differences over the n seeds both have (a seed fixes the stream order), in points; claimed sign in "
    "'Claimed'. 95 % paired t-interval, 95 % percentile bootstrap interval "
    f"({BOOTSTRAP_RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED}), two-sided paired t-test p. Verdict from "
    "the t-interval: holds (excludes 0 on the claimed side), not supported (contains 0), reversed (excludes 0 "
    "on the other side), no data (fewer than 2 common seeds). Rivals: every other method run on the benchmark "
    "except references (zero-shot, joint), with its comparison variants; appendix benchmarks are left out.")


def _summary_line(table: pd.DataFrame) -> str:
    profiles = sorted({p for p in table["profile"] if isinstance(p, str)})
    seeds = sorted({int(s) for text in table["seeds"] for s in str(text).split()})
    counts = table["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    return (f"Profile {', '.join(profiles) or '–'}; seeds {' '.join(map(str, seeds)) or '–'}; "
            f"{len(table)} comparisons: {tally}.")


def _code_lines(table: pd.DataFrame) -> list[str]:
    if "run_versions" in table:
        return results.code_footnotes(table)
    versions = sorted({v for text in table["code"].dropna() for v in str(text).split("; ") if v})
    return [f"Code: source {versions[0]}"] if len(versions) == 1 else \
        ([f"Code: mixed, {len(versions)} code versions:"] + [f"source {v}" for v in versions] if versions else [])


def claims_markdown(table: pd.DataFrame, heading_level: int = 2) -> str:
    """Markdown of a claims table: one section per paper method, the verdict tally, the table,
    how to read it, and the code version of its runs."""
    parts = []
    for paper in dict.fromkeys(table["paper"]):
        rows = table[table["paper"] == paper]
        parts.append(f"{'#' * heading_level} `{paper}`\n\n{_summary_line(rows)}\n\n"
                     + results.to_markdown(display_claims(rows)))
    notes = _code_lines(table)
    footnote = "".join(f"\n{line}\n" if k == 0 else f"- {line}\n" for k, line in enumerate(notes))
    return "\n".join(parts) + f"\n{EXPLANATION}\n" + footnote


def write_claims(runs: pd.DataFrame, directory: str | Path, appendix: Mapping[str, Sequence[str]] | None = None,
                 claims: Sequence[RivalClaim | AblationClaim] = CLAIMS) -> dict[str, Path]:
    """Write ``claims.csv`` (numbers, one row per comparison, with profile and code version) and
    ``claims.md`` under ``directory``, each atomically (:mod:`mmcl.atomic`); returns format -> path."""
    directory = Path(directory)
    table = claims_table(runs, appendix, claims)
    paths = {"csv": directory / "claims.csv", "md": directory / "claims.md"}
    atomic_write_text(paths["csv"], table.drop(columns=["run_versions"]).to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["md"], "# Claims of the papers, measured\n\n" + claims_markdown(table, 2))
    return paths


def read_claims(path: str | Path) -> pd.DataFrame:
    """A ``claims.csv`` written by :func:`write_claims`, with empty cells as None/NaN."""
    table = pd.read_csv(path, dtype={"seeds": str, "code": str, "benchmark": str, "mode": str, "rival": str,
                                     "profile": str, "scenario": str})
    for column in ("scenario", "benchmark", "mode", "rival", "profile", "code"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    table["seeds"] = table["seeds"].fillna("")
    return table


def _marker(method: str, end: str) -> str:
    return f"<!-- claims:{method}:{end} -->"


def docs_block(table: pd.DataFrame, method: str, source: str = "figures/claims.csv") -> str:
    """The generated block of ``method``'s doc page, from its rows of a claims table."""
    rows = table[table["paper"] == method]
    if rows.empty:
        body = f"No claims of `{method}` in `{source}`.\n"
    else:
        body = (f"Generated by `mmcl claims --update-docs` from `{source}`; do not edit by hand.\n"
                f"{_summary_line(rows)}\n\n" + results.to_markdown(display_claims(rows))
                + f"\n{EXPLANATION}\n" + "".join(f"\n{line}\n" if k == 0 else f"- {line}\n"
                                                for k, line in enumerate(_code_lines(rows))))
    return f"{_marker(method, 'start')}\n{body}{_marker(method, 'end')}"


def update_docs(claims_csv: str | Path, docs_dir: str | Path) -> list[Path]:
    """Rewrite, in every ``*.md`` under ``docs_dir``, each block between ``<!-- claims:<method>:start
    -->`` and ``<!-- claims:<method>:end -->`` from ``claims_csv``; nothing outside the blocks
    changes, and a second call changes nothing. Returns the files whose text changed."""
    table = read_claims(claims_csv)
    pattern = re.compile(r"<!-- claims:(?P<method>[\w.-]+):start -->.*?<!-- claims:(?P=method):end -->", re.S)
    changed = []
    for page in sorted(Path(docs_dir).glob("*.md")):
        text = page.read_text()
        new = pattern.sub(lambda match: docs_block(table, match["method"]), text)
        if new != text:
            atomic_write_text(page, new)
            changed.append(page)
    return changed
