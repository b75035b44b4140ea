"""Published results of the established methods, and whether the testbed keeps their orderings.

:data:`LITERATURE_FILE` (``mmcl/literature.yaml``, readable copy and sources in
``docs/literature.md``) holds numbers as their papers print them, one entry per number: source,
table, dataset, protocol, backbone, metric, scenario, method (the mmcl registry name) and value.
:func:`load_literature` reads it with ``yaml.safe_load`` and checks every entry; a bad file raises
:class:`LiteratureError`, one line naming the file and the key.

The check (``mmcl calibrate --literature``, :func:`compare`) asks of each scenario whether the
testbed orders the established methods the way the papers do:

- A *group* is one source's numbers under one (table, dataset, protocol, metric). Only entries
  with ``in_check`` true take part, at most one per method and group; the paper methods
  (:data:`PAPER_METHODS`) never do.
- A pair of methods is *established* when at least one group has both, and every group that has
  both puts the same method ahead by at least :data:`SEPARATION` points. One group that disagrees,
  or separates them by less, leaves the pair out. Its literature difference is the mean over those
  groups.
- Each established pair whose two methods have testbed runs counts as agreeing when the testbed's
  mean final accuracy puts the same method ahead (a tie agrees with neither order), and as an
  inversion when it puts the other ahead; the inversion's size is the testbed difference.
- Kendall's tau compares the two orderings over every pair of methods with runs that some group
  orders, by the sign of the mean difference over the groups that have both (no threshold):
  (concordant - discordant) / pairs, a testbed tie counting as neither. Where the literature
  orders every pair and the testbed has no ties this is Kendall's tau-a.
- A scenario passes when at least :data:`TARGET_SHARE` of its established pairs agree and no
  inversion exceeds :data:`MAX_INVERSION` points; with no established pair to compare it is
  ``n/a``.

This module imports no torch: the check reads stored run records only.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmcl import method_index
from mmcl.config import SCENARIOS, ConfigError
from mmcl.results import summarize_over_seeds

LITERATURE_FILE = Path(__file__).resolve().parent / "literature.yaml"
ENTRY_FIELDS = ("source", "table", "dataset", "protocol", "backbone", "metric", "scenario", "method", "value")
OPTIONAL_FIELDS = ("name_in_source", "note", "in_check")
SOURCE_FIELDS = ("citation", "url", "read_from")
METRICS = ("final_accuracy", "average_incremental_accuracy")
# The two reproduced papers' methods: what the testbed is built to judge, so never part of its calibration.
PAPER_METHODS = frozenset({"comm", "moe-adapters"})
SEPARATION = 5.0  # points by which every group must order a pair for it to count
TARGET_SHARE = 0.8  # share of established pairs the testbed must order the same way
MAX_INVERSION = 10.0  # largest testbed difference (points) an inversion may have


class LiteratureError(ConfigError):
    """A literature file that cannot be used; the message is one line naming the file and key."""


@dataclass(frozen=True)
class Source:
    key: str
    citation: str
    url: str
    read_from: str


@dataclass(frozen=True)
class Entry:
    """One published number (``value``, in percent)."""
    source: str
    table: str
    dataset: str
    protocol: str
    backbone: str
    metric: str
    scenario: str
    method: str
    value: float
    name_in_source: str | None = None
    note: str | None = None
    in_check: bool = True

    @property
    def group(self) -> tuple[str, str, str, str, str]:
        """(source, table, dataset, protocol, metric): the numbers one source compares directly."""
        return (self.source, self.table, self.dataset, self.protocol, self.metric)


@dataclass(frozen=True)
class Literature:
    path: Path
    sources: dict[str, Source]
    entries: tuple[Entry, ...]


def _text(where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LiteratureError(f"{where}: expected a non-empty text, got {value!r}")
    return value


def load_literature(path: str | Path | None = None, methods: Iterable[str] | None = None) -> Literature:
    """Read and check a literature file (default :data:`LITERATURE_FILE`).

    ``methods``: the known method names (default: the method index, :mod:`mmcl.method_index`).
    Raises :class:`LiteratureError` (one line: the file, the key, what is wrong)."""
    path = Path(path) if path is not None else LITERATURE_FILE
    if methods is None:
        methods = method_index.methods()
    known = set(methods)
    data = _read_yaml(path)
    _check_top_level(path, data)
    sources = {}
    for key, fields in data["sources"].items():
        sources[str(key)] = _source(f"{path}: sources.{key}", str(key), fields)
    if not isinstance(data["entries"], list) or not data["entries"]:
        raise LiteratureError(f"{path}: entries: expected a non-empty list of published numbers")
    entries = []
    in_check: dict[tuple, int] = {}
    for index, fields in enumerate(data["entries"]):
        where = f"{path}: entries[{index}]"
        entry = _entry(where, fields, sources, known)
        if entry.in_check:
            key = (entry.group, entry.scenario, entry.method)
            if key in in_check:
                raise LiteratureError(
                    f"{where}.in_check: {entry.method!r} already has an entry in the check in this group "
                    f"(entries[{in_check[key]}], {entry.source} {entry.table}, {entry.dataset}, {entry.protocol}); "
                    f"set in_check: false on all but one")
            in_check[key] = index
        entries.append(entry)
    return Literature(path, sources, tuple(entries))


def _read_yaml(path: Path):
    """The file's YAML; LiteratureError (where it can tell: the line) when it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LiteratureError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise LiteratureError(f"{path}: not valid YAML{where}: {problem}") from None


def _check_top_level(path: Path, data) -> None:
    """A mapping of exactly ``sources`` (itself a mapping) and ``entries``."""
    if not isinstance(data, dict):
        raise LiteratureError(f"{path}: expected a mapping with 'sources' and 'entries' at the top")
    for key in data:
        if key not in ("sources", "entries"):
            raise LiteratureError(f"{path}: {key}: unknown top-level key (allowed: sources, entries)")
    for key in ("sources", "entries"):
        if key not in data:
            raise LiteratureError(f"{path}: missing top-level key '{key}'")
    if not isinstance(data["sources"], dict):
        raise LiteratureError(f"{path}: sources: expected a mapping of source key -> citation, url, read_from")


def _check_mapping(where: str, fields, expected: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """``fields`` is a mapping (of the ``expected`` keys) with no key outside ``allowed``."""
    if not isinstance(fields, dict):
        raise LiteratureError(f"{where}: expected a mapping with {', '.join(expected)}")
    for name in fields:
        if name not in allowed:
            raise LiteratureError(f"{where}.{name}: unknown key (allowed: {', '.join(allowed)})")


def _require(where: str, fields: dict, name: str) -> None:
    if name not in fields:
        raise LiteratureError(f"{where}: missing key '{name}'")


def _source(where: str, key: str, fields) -> Source:
    _check_mapping(where, fields, SOURCE_FIELDS, SOURCE_FIELDS)
    for name in SOURCE_FIELDS:
        _require(where, fields, name)
        _text(f"{where}.{name}", fields[name])
    return Source(key, fields["citation"], fields["url"], fields["read_from"])


def _entry(where: str, fields, sources: dict[str, Source], known: set[str]) -> Entry:
    """One published number, checked: its texts, a percent value, and names the file and the code know."""
    _check_mapping(where, fields, ENTRY_FIELDS, ENTRY_FIELDS + OPTIONAL_FIELDS)
    for name in ENTRY_FIELDS:
        _require(where, fields, name)
    for name in ENTRY_FIELDS:
        if name != "value":
            _text(f"{where}.{name}", fields[name])
    for name in ("name_in_source", "note"):
        if fields.get(name) is not None:
            _text(f"{where}.{name}", fields[name])
    value = fields["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise LiteratureError(f"{where}.value: expected a number of percent in [0, 100], got {value!r}")
    if fields["source"] not in sources:
        raise LiteratureError(f"{where}.source: {fields['source']!r} is not a key of sources "
                              f"({', '.join(sources) or 'none'})")
    if fields["scenario"] not in SCENARIOS:
        raise LiteratureError(f"{where}.scenario: {fields['scenario']!r} is not one of {', '.join(SCENARIOS)}")
    if fields["metric"] not in METRICS:
        raise LiteratureError(f"{where}.metric: {fields['metric']!r} is not one of {', '.join(METRICS)}")
    if fields["method"] not in known:
        raise LiteratureError(f"{where}.method: {fields['method']!r} is not a registered method "
                              f"(see `mmcl list methods`)")
    checked = fields.get("in_check", True)
    if not isinstance(checked, bool):
        raise LiteratureError(f"{where}.in_check: expected true or false, got {checked!r}")
    return Entry(**{name: fields[name] for name in ENTRY_FIELDS if name != "value"}, value=float(value),
                 name_in_source=fields.get("name_in_source"), note=fields.get("note"), in_check=checked)


# ------------------------------------------------------------------------------------ the pair rule
def checked_entries(entries: Iterable[Entry], scenario: str) -> list[Entry]:
    """The entries of ``scenario`` that take part in the check (``in_check``, not a paper method)."""
    return [e for e in entries if e.scenario == scenario and e.in_check and e.method not in PAPER_METHODS]


def pair_differences(entries: Iterable[Entry], scenario: str) -> dict[tuple[str, str], list[tuple[tuple, float]]]:
    """(a, b), a < b by name -> [(group, value of a - value of b)] over the groups that have both."""
    groups: dict[tuple, dict[str, float]] = {}
    for entry in checked_entries(entries, scenario):
        groups.setdefault(entry.group, {})[entry.method] = entry.value
    differences: dict[tuple[str, str], list[tuple[tuple, float]]] = {}
    for group, values in groups.items():
        for a, b in itertools.combinations(sorted(values), 2):
            differences.setdefault((a, b), []).append((group, values[a] - values[b]))
    return differences


@dataclass(frozen=True)
class LiteraturePair:
    """A pair every group that has both orders the same way by at least the separation."""
    better: str
    worse: str
    difference: float  # mean over the groups, points, > 0
    groups: tuple[tuple, ...]


def established_pairs(entries: Iterable[Entry], scenario: str, separation: float = SEPARATION) -> list[LiteraturePair]:
    """The established pairs of ``scenario`` (see the module docstring), by name."""
    pairs = []
    for (a, b), found in sorted(pair_differences(entries, scenario).items()):
        values = [d for _, d in found]
        if all(d >= separation for d in values):
            better, worse, sign = a, b, 1.0
        elif all(d <= -separation for d in values):
            better, worse, sign = b, a, -1.0
        else:
            continue
        pairs.append(LiteraturePair(better, worse, sign * sum(values) / len(values), tuple(g for g, _ in found)))
    return pairs


def literature_directions(entries: Iterable[Entry], scenario: str) -> dict[tuple[str, str], float]:
    """(a, b), a < b -> mean of a - b over the groups that have both (no threshold), for Kendall's tau."""
    return {pair: sum(d for _, d in found) / len(found) for pair, found in pair_differences(entries, scenario).items()}


def kendall_tau(directions: Mapping[tuple[str, str], float], testbed: Mapping[str, float]) -> tuple[float | None, int]:
    """(tau, pairs): (concordant - discordant) / pairs over the pairs with both methods in ``testbed``
    that the literature orders (nonzero direction); a testbed tie counts as neither. None without pairs."""
    concordant = discordant = pairs = 0
    for (a, b), direction in directions.items():
        if a not in testbed or b not in testbed or direction == 0:
            continue
        pairs += 1
        product = direction * (testbed[a] - testbed[b])
        concordant += product > 0
        discordant += product < 0
    return ((concordant - discordant) / pairs if pairs else None), pairs


@dataclass(frozen=True)
class PairOutcome:
    better: str  # ahead in the literature
    worse: str
    literature_difference: float
    groups: int
    testbed_difference: float | None  # testbed value of better - worse; None when a run is missing
    outcome: str  # agree | inversion | tie | missing | not in mmcl


@dataclass
class ScenarioCheck:
    scenario: str
    benchmark: str | None = None
    mode: str | None = None
    pairs: list[PairOutcome] = field(default_factory=list)
    tau: float | None = None
    tau_pairs: int = 0
    missing: list[str] = field(default_factory=list)  # methods with established pairs, compatible, no runs
    not_in_mmcl: list[str] = field(default_factory=list)  # methods mmcl does not run in this scenario
    # method -> ((run folder, code version), ...) and ((run folder, inputs), ...) of its testbed runs
    run_versions: dict[str, tuple] = field(default_factory=dict)
    run_inputs: dict[str, tuple] = field(default_factory=dict)

    @property
    def compared(self) -> list[PairOutcome]:
        return [p for p in self.pairs if p.outcome in ("agree", "inversion", "tie")]

    @property
    def inversions(self) -> list[PairOutcome]:
        return [p for p in self.pairs if p.outcome == "inversion"]

    @property
    def share(self) -> float | None:
        compared = self.compared
        return sum(p.outcome == "agree" for p in compared) / len(compared) if compared else None

    @property
    def verdict(self) -> str:
        if not self.compared:
            return "n/a"
        big = [p for p in self.inversions if abs(p.testbed_difference) > MAX_INVERSION]
        return "PASS" if self.share >= TARGET_SHARE and not big else "FAIL"


def compare(entries: Iterable[Entry], testbed: Mapping[str, float], scenario: str,
            compatible: Iterable[str] | None = None, separation: float = SEPARATION) -> ScenarioCheck:
    """The check of one scenario: ``testbed`` maps method -> mean final accuracy of its runs;
    ``compatible``: the methods mmcl runs in this scenario (None: all), the others' pairs are
    reported as ``not in mmcl``, not as missing runs."""
    entries = list(entries)
    compatible = None if compatible is None else set(compatible)
    check = ScenarioCheck(scenario)
    missing, absent = set(), set()
    for pair in established_pairs(entries, scenario, separation):
        outside = [m for m in (pair.better, pair.worse) if compatible is not None and m not in compatible]
        lacking = [m for m in (pair.better, pair.worse) if m not in testbed and m not in outside]
        if outside or lacking:
            absent.update(outside)
            missing.update(lacking)
            outcome, difference = ("not in mmcl" if outside else "missing"), None
        else:
            difference = testbed[pair.better] - testbed[pair.worse]
            outcome = "agree" if difference > 0 else "inversion" if difference < 0 else "tie"
        check.pairs.append(PairOutcome(pair.better, pair.worse, pair.difference, len(pair.groups), difference, outcome))
    usable = {m: v for m, v in testbed.items() if compatible is None or m in compatible}
    check.tau, check.tau_pairs = kendall_tau(literature_directions(entries, scenario), usable)
    check.missing, check.not_in_mmcl = sorted(missing), sorted(absent)
    return check


# ------------------------------------------------------------------------------------- the testbed
def main_mode(modes: Iterable[str]) -> str | None:
    """The evaluation mode a scenario is judged in: ``standard``, else the modality-aware one."""
    modes = set(modes)
    for mode in ("standard", "modality_aware", "modality_agnostic"):
        if mode in modes:
            return mode
    return min(modes) if modes else None


def testbed_accuracy(runs, scenario: str, benchmark: str):
    """(mode, table) of one scenario's main benchmark in ``runs`` (a :func:`mmcl.results.load_runs`
    frame): the table has one row per method run with its own defaults (no variant, no changed
    configuration), ``final_accuracy_mean`` over the seeds present, ``seeds``, ``run_versions``
    and ``run_inputs`` (:func:`mmcl.results.summarize_over_seeds`)."""
    selected = runs[(runs["scenario"] == scenario) & (runs["benchmark"] == benchmark)
                    & runs["variant"].isna() & (runs["label"] == runs["method"])]
    mode = main_mode(selected["mode"])
    selected = selected[selected["mode"] == mode]
    return mode, summarize_over_seeds(selected, ["method"], ["final_accuracy"])


# ------------------------------------------------------------------------------------------ output
def _points(value: float) -> str:
    return f"{value:.1f}"


def format_check(check: ScenarioCheck) -> list[str]:
    """The printed lines of one scenario: share of agreeing pairs, Kendall's tau, every inversion
    with its size (testbed difference, literature difference), the verdict."""
    where = f"{check.scenario} ({check.benchmark})" if check.benchmark else check.scenario
    tau = (f"Kendall's tau {check.tau:+.2f} over {check.tau_pairs} pairs" if check.tau is not None
           else "Kendall's tau: no pair to compare")
    compared = check.compared
    if not compared:
        reason = ("no established pair with runs of both methods" if check.pairs
                  else "no established pair in the literature")
        lines = [f"{where}: {reason}; {tau}: n/a"]
    else:
        agree = sum(p.outcome == "agree" for p in compared)
        lines = [f"{where}: {agree} of {len(compared)} established pairs agree ({100 * check.share:.0f} %), "
                 f"{tau}, {len(check.inversions)} inversion(s): {check.verdict}"]
    for pair in check.inversions:
        lines.append(f"  inversion: {pair.worse} ahead of {pair.better} by {_points(-pair.testbed_difference)} "
                     f"points in the testbed; the literature puts {pair.better} ahead by "
                     f"{_points(pair.literature_difference)} points ({pair.groups} group(s))")
    for pair in compared:
        if pair.outcome == "tie":
            lines.append(f"  tie: {pair.better} and {pair.worse} equal in the testbed; the literature puts "
                         f"{pair.better} ahead by {_points(pair.literature_difference)} points")
    return lines


def missing_runs_line(checks: Iterable[ScenarioCheck], profile: str) -> str | None:
    """One line naming the runs to make, or None when nothing is missing."""
    parts = [f"{c.scenario}/{c.benchmark}: {', '.join(c.missing)}" for c in checks if c.missing]
    if not parts:
        return None
    return (f"missing runs ({'; '.join(parts)}): run `mmcl run --profile {profile} --scenario <scenario> "
            f"--method <method> --seed 0` for each, or `mmcl reproduce --profile {profile}`")
