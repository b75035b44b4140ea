"""The papers' claims, checked against run records with paired statistics.

Each claim of each paper is data (:data:`CLAIMS`): a paper method beats its rivals on a metric
(:class:`RivalClaim`), or removing one of its components lowers final accuracy
(:class:`AblationClaim`). :func:`claims_table` measures every claim on every benchmark of its
scenarios (appendix benchmarks left out) and in every evaluation mode, against every rival the
runs hold.

Comparisons are paired by seed: a seed fixes the class (or modality) order of the stream, so both
methods of a pair saw the same stream. A comparison's n is the number of paired seeds (seeds both
runs have), d_1 … d_n the per-seed differences (paper − rival; ablation: full method − variant).
:func:`paired_difference` gives their mean, sample std, the 95 % paired t-interval
``mean ± t_{0.975, n−1} · std/√n`` and the two-sided p-value of the paired t-test. There is no
bootstrap interval: over 3 seeds a bootstrap has only 10 distinct resamples, and its interval
looks far more certain than three numbers can be.

The verdict (:func:`verdict`) asks for the interval and for every seed:

- ``holds``: the t-interval excludes 0 on the claimed side AND every seed's difference has the
  claimed sign (d_k > 0 for a claimed "> 0", d_k < 0 for "< 0"; a tie d_k = 0 is not the claimed sign);
- ``reversed``: the same on the other side: the interval excludes 0 on the other side AND every
  d_k has the other sign;
- ``not supported``: anything else with n ≥ 2 (the interval contains 0, or the seeds disagree);
- ``no data``: n < 2 (no interval).

With 3 (or 4) seeds the sign condition is implied by the 95 % interval: a series with one d_k on
the wrong side (or 0) has |t| ≤ n − 1, below t_{0.975, 2} = 4.30 (t_{0.975, 3} = 3.18); from 5
seeds on (n − 1 = 4 > 2.78) the interval alone can exclude 0 while a seed disagrees, and the
sign condition decides.

A comparison with n = 0 was **not run** (no seed that both runs hold: an ablation never scheduled
on that benchmark, a scenario without runs). Its verdict is ``no data``, but the headline
(:func:`tally_text`) counts only the comparisons that were run (n ≥ 1) by verdict and gives the
not-run ones as a separate count; the Markdown lists them apart from the table.

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
           "differences", "on_claimed_side", "effect", "effect_std", "t_low", "t_high", "p_value", "verdict",
           "profile", "code"]


# ------------------------------------------------------------------------------- statistics
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf(probability, df))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Paired comparison of ``a`` and ``b`` (same length, pair k = seed k): the differences
    ``d = a − b`` (``differences``, a list), their mean and sample std (ddof 1), the ``confidence``
    t-interval ``mean ± t_{(1+c)/2, n−1} · std/√n`` and the two-sided p-value of the paired t-test.
    With fewer than 2 pairs everything but ``n``, the differences and the mean is NaN; with all
    differences equal the interval is that value and p is 0 (1 if it is 0).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": n, "differences": [float(x) for x in d], "mean": float(d.mean()) if n else math.nan,
           "std": math.nan, "t_low": math.nan, "t_high": math.nan, "p_value": math.nan}
    if n < 2:
        return out
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    if std == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * stats.t.sf(abs(mean / (std / math.sqrt(n))), n - 1))
    out.update(std=std, t_low=mean - half, t_high=mean + half, p_value=p_value)
    return out


def on_claimed_side(differences: Sequence[float], higher: bool) -> int:
    """How many per-seed differences have the claimed sign: > 0 when ``higher``, else < 0 (a tie,
    0, is on neither side)."""
    return sum(1 for d in differences if (d > 0 if higher else d < 0))


def verdict(low: float, high: float, higher: bool, differences: Sequence[float]) -> str:
    """The verdict of a paired comparison (module docstring): ``low``, ``high`` its t-interval of
    (paper − rival), ``higher`` the claimed direction, ``differences`` the per-seed differences.

    ``holds``: the interval excludes 0 on the claimed side and every difference has the claimed
    sign; ``reversed``: both on the other side; ``not supported``: otherwise; ``no data``: fewer
    than 2 differences, or no interval."""
    n = len(differences)
    if n < 2 or low is None or high is None or math.isnan(low) or math.isnan(high):
        return "no data"
    above = low > 0 and all(d > 0 for d in differences)
    below = high < 0 and all(d < 0 for d in differences)
    if above or below:
        return "holds" if above == higher else "reversed"
    return "not supported"


def _differences_text(differences: Sequence[float]) -> str:
    """Per-seed differences for the CSV, in the order of ``seeds``: 4 decimals, trailing zeros off."""
    return " ".join(f"{round(d, 4) + 0.0:.4f}".rstrip("0").rstrip(".") for d in differences)


# ------------------------------------------------------------------------------- claims table
def method_info(method: str) -> tuple[str, dict]:
    """(family, comparison variants) of a registered method; ("", {}) for an unknown one.

    ``family`` is the method's ``family`` ClassVar (classic, rehearsal, prompt, adapter, paper,
    reference); ``comparisons`` its named comparison variants (a ``comparisons`` ClassVar, if the
    method declares one), which are rivals like any baseline.
    """
    from mmcl.methods import REGISTRY  # torch: the comparisons' overrides live in the classes, not the index

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
            "differences": _differences_text(stats_["differences"]),
            "on_claimed_side": on_claimed_side(stats_["differences"], claim.higher),
            "effect": stats_["mean"], "effect_std": stats_["std"], "t_low": stats_["t_low"],
            "t_high": stats_["t_high"], "p_value": stats_["p_value"],
            "verdict": verdict(stats_["t_low"], stats_["t_high"], claim.higher, stats_["differences"]),
            "profile": None if group is None or group.empty else group["profile"].iloc[0],
            "run_versions": results._run_versions(used) if used is not None and not used.empty else ()}


def claims_table(runs: pd.DataFrame, appendix: Mapping[str, Sequence[str]] | None = None,
                 claims: Sequence[RivalClaim | AblationClaim] = CLAIMS, info=method_info) -> pd.DataFrame:
    """Every claim of ``claims`` measured on ``runs``, one row per (claim, scenario, benchmark,
    mode, rival); columns :data:`COLUMNS` plus ``run_versions``.

    ``effect`` is paper − rival (for an ablation: full method − variant), ``direction`` the claimed
    sign; ``n`` and ``seeds`` the seeds both have, ``differences`` the per-seed differences in that
    order and ``on_claimed_side`` how many have the claimed sign. Benchmarks of ``appendix``
    (scenario -> names) are left out. A scenario without runs gives one ``no data`` row with n = 0;
    a rival or variant without a common seed gives a ``no data`` row with n = 0 (not run, see
    :func:`not_run`), a single common seed a ``no data`` row with n = 1.
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


def _side(on_side, n) -> str:
    return "–" if not n else f"{int(on_side)}/{int(n)}"


def display_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as shown in Markdown: n (paired seeds), effects and intervals in points,
    rounded, and how many seeds' differences have the claimed sign."""
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
        "Seeds on claimed side": [_side(k, n) for k, n in zip(table["on_claimed_side"], table["n"])],
        "95 % t-interval": [_interval(lo, hi) for lo, hi in zip(table["t_low"], table["t_high"])],
        "p": [_p_text(p) for p in table["p_value"]],
        "Verdict": table["verdict"],
    })


EXPLANATION = (
    "n: the paired seeds, seeds both runs have (a seed fixes the stream order). Effect: paper method − rival "
    "(ablation: full method − variant), mean ± sample std of the n per-seed differences, in points; claimed "
    "sign in 'Claimed'; 'Seeds on claimed side': how many of the n differences have the claimed sign (a tie "
    "has neither). 95 % paired t-interval of the mean difference (mean ± t(0.975, n − 1) · std / √n) and the "
    "two-sided paired t-test's p. Verdict: holds when the t-interval excludes 0 on the claimed side and "
    "every seed's difference has the claimed sign; reversed when both hold on the other side; not supported "
    "otherwise; no data with a single paired seed. With 3 seeds the 95 % interval excludes 0 only if all "
    "three differences agree in sign; from 5 seeds on the sign condition can decide. The headline counts "
    "the comparisons that were run (n ≥ 1); those with no paired seed (not run: an ablation not scheduled "
    "on a benchmark, a scenario without runs) are listed after the table and counted apart. Rivals: every "
    "other method run on the benchmark except references (zero-shot, joint), with its comparison variants; "
    "appendix benchmarks are left out.")


# ------------------------------------------------------------------------------- power
POWER = 0.8
TARGET_DIFFERENCE = 5.0  # points: the detectable difference the number of seeds is chosen for


def detectable_difference(std: float, n: int, power: float = POWER, confidence: float = CONFIDENCE) -> float:
    """The smallest true mean difference (points) that a paired comparison of ``n`` seeds, whose
    per-seed differences have standard deviation ``std``, finds on its side with probability
    ``power``: the paired t statistic, noncentral t with n − 1 degrees of freedom and noncentrality
    d·√n / std, exceeds t((1 + confidence) / 2, n − 1), so that the interval excludes 0. (The
    verdict's sign condition is implied up to 4 seeds and can only raise it from 5 on.) NaN below
    2 seeds or without a positive std."""
    if n < 2 or not std > 0 or not math.isfinite(std):
        return math.nan
    df, critical = n - 1, t_quantile((1 + confidence) / 2, n - 1)
    def shortfall(d: float) -> float:
        return float(stats.nct.sf(critical, df, d * math.sqrt(n) / std)) - power

    high = std
    while shortfall(high) < 0:
        high *= 2
    from scipy.optimize import brentq  # only for a power calculation (scipy.stats is imported above)

    return float(brentq(shortfall, 0.0, high, xtol=1e-6))


def seeds_needed(std: float, target: float = TARGET_DIFFERENCE, power: float = POWER, most: int = 100) -> int | None:
    """The fewest seeds (at least 2) whose :func:`detectable_difference` is at most ``target``;
    None when more than ``most`` would be needed."""
    for n in range(2, most + 1):
        if detectable_difference(std, n, power) <= target:
            return n
    return None


def power_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per paper method, scenario, benchmark, mode and metric of a claims table: the seeds run (the
    median n of its comparisons with n ≥ 2), the per-seed differences' std pooled over those
    comparisons (root mean square of their stds), the difference detectable with 80 % power at
    that n, and the seeds needed to detect :data:`TARGET_DIFFERENCE` points."""
    rows = []
    measured = table[table["n"] >= 2]
    keys = ["paper", "scenario", "benchmark", "mode", "metric"]
    for key, group in measured.groupby(keys, sort=False, dropna=False):
        std = math.sqrt(float((pd.to_numeric(group["effect_std"]) ** 2).mean()))
        n = int(np.median(group["n"]))
        rows.append({**dict(zip(keys, key)), "n": n, "comparisons": len(group), "pooled_std": std,
                     "detectable": detectable_difference(std, n), "seeds_for_target": seeds_needed(std)})
    return pd.DataFrame(rows, columns=[*keys, "n", "comparisons", "pooled_std", "detectable", "seeds_for_target"])


def _power_markdown(table: pd.DataFrame) -> str:
    powers = power_table(table)
    if powers.empty:
        return ""
    shown = pd.DataFrame({
        "Scenario": [results.SCENARIO_TITLES.get(s, s) for s in powers["scenario"]],
        "Benchmark": powers["benchmark"], "Mode": [results.MODE_TITLES.get(m, m) for m in powers["mode"]],
        "Metric": powers["metric"], "n": powers["n"], "Comparisons": powers["comparisons"],
        "Std of differences": [_number(v) for v in powers["pooled_std"]],
        f"Detectable ({POWER:.0%} power)": [_number(v) for v in powers["detectable"]],
        f"Seeds for {TARGET_DIFFERENCE:g} points": [str(v) if v is not None and not pd.isna(v) else "> 100"
                                                     for v in powers["seeds_for_target"]]})
    return (f"What these seeds can detect: the smallest true difference (points) that a comparison finds with "
            f"{POWER:.0%} power at its n (paired t, 95 %), from the per-seed differences' std pooled over "
            f"the comparisons of each benchmark and metric; and the seeds that would detect "
            f"{TARGET_DIFFERENCE:g} points.\n\n" + results.to_markdown(shown) + "\n")


# ------------------------------------------------------------------------------- replication
REPLICATION_KEYS = ["paper", "claim", "scenario", "benchmark", "mode", "rival"]


def seed_sets(seeds: Sequence[int], sets: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Two disjoint seed sets: ``sets`` as given (checked), or the seeds run split into halves of
    equal size (the first half, then the next; an odd seed left out)."""
    seeds = sorted({int(s) for s in seeds})
    if sets is None:
        half = len(seeds) // 2
        sets = [seeds[:half], seeds[half:2 * half]]
    sets = [sorted({int(s) for s in group}) for group in sets]
    if len(sets) != 2 or any(len(group) < 2 for group in sets):
        raise ValueError(f"replication needs two seed sets of at least 2 seeds each, got {sets} "
                         f"(seeds run: {' '.join(map(str, seeds)) or 'none'})")
    if set(sets[0]) & set(sets[1]):
        raise ValueError(f"replication seed sets must be disjoint, got {sets}")
    missing = sorted(set(sets[0] + sets[1]) - set(seeds))
    if missing:
        raise ValueError(f"seeds {' '.join(map(str, missing))} have no runs (seeds run: {' '.join(map(str, seeds))})")
    return sets


def replicate(runs: pd.DataFrame, sets: Sequence[Sequence[int]] | None = None,
              appendix: Mapping[str, Sequence[str]] | None = None,
              claims: Sequence[RivalClaim | AblationClaim] = CLAIMS) -> dict:
    """The claims measured twice, on two disjoint seed sets (:func:`seed_sets`), and how their
    verdicts agree: over the comparisons run with at least 2 paired seeds in both, per paper
    method, the share that agree, the holds ↔ reversed flips, the share of decisive verdicts
    (holds or reversed, over both measurements) and every comparison whose verdict changed."""
    sets = seed_sets(runs["seed"].unique() if not runs.empty else [], sets)
    first, second = (claims_table(runs[runs["seed"].isin(group)], appendix, claims) for group in sets)
    merged = first.merge(second, on=REPLICATION_KEYS, suffixes=("_a", "_b"))
    both = merged[(merged["n_a"] >= 2) & (merged["n_b"] >= 2)].copy()
    both["agree"] = both["verdict_a"] == both["verdict_b"]
    decisive = {"holds", "reversed"}
    both["flip"] = both["verdict_a"].isin(decisive) & both["verdict_b"].isin(decisive) & ~both["agree"]
    per_paper = {}
    for paper, group in both.groupby("paper", sort=False):
        verdicts = pd.concat([group["verdict_a"], group["verdict_b"]])
        per_paper[paper] = {"compared": len(group), "agree": int(group["agree"].sum()),
                            "share": float(group["agree"].mean()), "flips": int(group["flip"].sum()),
                            "decisive": float(verdicts.isin(decisive).mean())}
    changes = both[~both["agree"]][[*REPLICATION_KEYS, "verdict_a", "verdict_b", "effect_a", "effect_b"]]
    return {"sets": sets, "papers": per_paper, "changes": changes.reset_index(drop=True)}


def replication_text(result: dict) -> str:
    """What :func:`replicate` found, as lines: per paper method the agreement, then each change."""
    a, b = (" ".join(map(str, group)) for group in result["sets"])
    lines = [f"Replication: the claims on seeds {a} against seeds {b}."]
    for paper, found in result["papers"].items():
        lines.append(f"- `{paper}`: {found['agree']} of {found['compared']} verdicts agree ({found['share']:.0%}); "
                     f"{found['flips']} holds <-> reversed; decisive verdicts {found['decisive']:.0%}")
    if not result["papers"]:
        lines.append("- no comparison has at least 2 paired seeds in both sets")
    for row in result["changes"].itertuples(index=False):
        where = f"{results.SCENARIO_TITLES.get(row.scenario, row.scenario)}, {row.benchmark}, " \
                f"{results.MODE_TITLES.get(row.mode, row.mode)}"
        lines.append(f"  changed: `{row.paper}` {row.claim} vs `{row.rival}` ({where}): "
                     f"{row.verdict_a} ({_number(row.effect_a, signed=True)}) -> {row.verdict_b} "
                     f"({_number(row.effect_b, signed=True)})")
    return "\n".join(lines)


def not_run(table: pd.DataFrame) -> pd.Series:
    """Which rows of a claims table were not run: no seed that both runs hold (n = 0)."""
    return table["n"] == 0


def tally_text(table: pd.DataFrame) -> str:
    """The headline's count: the comparisons run (n ≥ 1) by verdict, then the not-run ones apart,
    e.g. ``11 comparisons run: 2 holds, 5 not supported, 2 reversed, 2 no data (a single paired
    seed); 7 not run (no paired seed)``."""
    run = table[~not_run(table)]
    counts = run["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" + (" (a single paired seed)" if v == "no data" else "")
                      for v in VERDICTS)
    return f"{len(run)} comparisons run: {tally}; {len(table) - len(run)} not run (no paired seed)"


def _summary_line(table: pd.DataFrame) -> str:
    profiles = sorted({p for p in table["profile"] if isinstance(p, str)})
    seeds = sorted({int(s) for text in table["seeds"] for s in str(text).split()})
    return f"Profile {', '.join(profiles) or '–'}; seeds {' '.join(map(str, seeds)) or '–'}; {tally_text(table)}."


def _not_run_list(table: pd.DataFrame) -> str:
    """The not-run rows of ``table`` as a short list, one item per (claim, rival): where it was not
    run, by scenario, benchmark and mode; "" when every row was run."""
    skipped = table[not_run(table)]
    if skipped.empty:
        return ""
    def present(value):  # a cell, None where empty (None or NaN)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    places: dict[tuple, dict] = {}
    for row in skipped.itertuples(index=False):
        scenarios = places.setdefault((row.claim, present(row.rival), row.paper), {})
        benchmarks = scenarios.setdefault(present(row.scenario), {})
        benchmark, mode = present(row.benchmark), present(row.mode)
        if benchmark is not None:
            benchmarks.setdefault(benchmark, []).append(results.MODE_TITLES.get(mode, mode or "–"))
    items = []
    for (claim, rival, paper), scenarios in places.items():
        where = []
        for scenario, benchmarks in scenarios.items():
            if scenario is None:
                where.append(f"no runs of `{paper}`")
            elif not benchmarks:
                where.append(f"{results.SCENARIO_TITLES.get(scenario, scenario)} (no runs)")
            else:
                where.append(f"{results.SCENARIO_TITLES.get(scenario, scenario)} " + ", ".join(
                    f"{benchmark} ({', '.join(modes)})" for benchmark, modes in benchmarks.items()))
        items.append(f"- {claim}" + (f", `{rival}`" if rival else "") + ": " + "; ".join(where))
    return (f"Not run (no paired seed), {len(skipped)} comparisons, not counted in the headline:\n\n"
            + "\n".join(items) + "\n")


def _section(rows: pd.DataFrame) -> str:
    """Summary line, the table of the comparisons run, the list of those not run, and what the
    seeds can detect (:func:`power_table`)."""
    run = rows[~not_run(rows)]
    table = "\n" + results.to_markdown(display_claims(run)) if not run.empty else ""
    skipped = _not_run_list(rows)
    power = _power_markdown(rows)
    return f"{_summary_line(rows)}\n{table}" + (f"\n{skipped}" if skipped else "") + (f"\n{power}" if power else "")


def _code_lines(table: pd.DataFrame) -> list[str]:
    if "run_versions" in table:
        return results.code_footnotes(table)
    versions = sorted({v for text in table["code"].dropna() for v in str(text).split("; ") if v})
    return [f"Code: source {versions[0]}"] if len(versions) == 1 else \
        ([f"Code: mixed, {len(versions)} code versions:"] + [f"source {v}" for v in versions] if versions else [])


def claims_markdown(table: pd.DataFrame, heading_level: int = 2) -> str:
    """Markdown of a claims table: how to read it and the verdict rule (a preamble), then one section
    per paper method (the headline, the table of comparisons run, the list of those not run), and
    the code version of its runs."""
    parts = []
    for paper in dict.fromkeys(table["paper"]):
        rows = table[table["paper"] == paper]
        parts.append(f"{'#' * heading_level} `{paper}`\n\n" + _section(rows))
    notes = _code_lines(table)
    footnote = "".join(f"\n{line}\n" if k == 0 else f"- {line}\n" for k, line in enumerate(notes))
    return f"{EXPLANATION}\n\n" + "\n".join(parts) + footnote


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
    table = pd.read_csv(path, dtype={"seeds": str, "differences": str, "code": str, "benchmark": str, "mode": str,
                                     "rival": str, "profile": str, "scenario": str})
    missing = [column for column in COLUMNS if column not in table]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (written by an older mmcl): run `mmcl claims` again")
    for column in ("scenario", "benchmark", "mode", "rival", "profile", "code"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    table["seeds"] = table["seeds"].fillna("")
    table["differences"] = table["differences"].fillna("")
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
                + _section(rows) + f"\n{EXPLANATION}\n" + "".join(f"\n{line}\n" if k == 0 else f"- {line}\n"
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
