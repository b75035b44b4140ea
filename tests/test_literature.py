"""mmcl.literature and `mmcl calibrate --literature`: the shipped data file, the pair rule on a
hand-built literature with hand-computed answers, bad files, and the command on fake run records."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from test_results import write_run

from mmcl import literature
from mmcl.cli import main
from mmcl.literature import Entry, LiteratureError, compare, established_pairs, kendall_tau, literature_directions
from mmcl.method_index import methods

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_file_loads_and_every_entry_names_a_known_method_and_source():
    found = literature.load_literature()
    known = set(methods())
    assert found.path == literature.LITERATURE_FILE
    assert len(found.entries) >= 40 and len(found.sources) >= 3
    for entry in found.entries:
        for name in literature.ENTRY_FIELDS:
            value = getattr(entry, name)
            assert value is not None and (not isinstance(value, str) or value.strip()), (entry, name)
        assert entry.method in known and entry.source in found.sources
        assert entry.scenario in ("class_incremental", "domain_incremental", "modality_incremental")
        assert 0 <= entry.value <= 100
    for source in found.sources.values():
        assert source.url.startswith("https://") and source.citation and source.read_from
    assert not {e.method for e in found.entries} & literature.PAPER_METHODS
    # shipped in the wheel next to the module that reads it
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "literature.yaml" in package_data["mmcl"]


def test_every_number_of_the_data_file_is_in_the_document():
    text = (ROOT / "docs" / "literature.md").read_text(encoding="utf-8")
    for entry in literature.load_literature().entries:
        assert f"{entry.value:.2f}" in text or f"{entry.value:.1f}" in text, entry


def _entry(source, method, value, in_check=True, scenario="class_incremental"):
    return Entry(source=source, table="T1", dataset=f"D-{source}", protocol="10 tasks", backbone="ViT-B/16",
                 metric="final_accuracy", scenario=scenario, method=method, value=value, in_check=in_check)


# Two sources. A: joint 80, replay 70, lwf 60, finetune 50; B: joint 75, replay 72, lwf 50.
# Pairs (a - b per group): joint/replay +10, +3 -> not separated by 5 in B: left out;
# joint/lwf +20, +25 -> joint by 22.5; joint/finetune +30 (A only); replay/lwf +10, +22 -> replay by 16;
# replay/finetune +20; lwf/finetune +10. A paper method and an entry out of the check change nothing.
HAND_BUILT = [
    _entry("A", "joint", 80), _entry("A", "replay", 70), _entry("A", "lwf", 60), _entry("A", "finetune", 50),
    _entry("B", "joint", 75), _entry("B", "replay", 72), _entry("B", "lwf", 50),
    _entry("A", "comm", 99.0), _entry("B", "replay", 10.0, in_check=False),
    _entry("A", "ewc", 1.0, scenario="domain_incremental"),
]


def test_established_pairs_follow_the_rule_by_hand():
    found = established_pairs(HAND_BUILT, "class_incremental")
    pairs = {(p.better, p.worse): (p.difference, len(p.groups)) for p in found}
    assert pairs == {("joint", "lwf"): (22.5, 2), ("joint", "finetune"): (30.0, 1), ("replay", "lwf"): (16.0, 2),
                     ("replay", "finetune"): (20.0, 1), ("lwf", "finetune"): (10.0, 1)}


def test_a_pair_the_sources_order_differently_is_left_out():
    contested = [_entry("A", "lwf", 70), _entry("A", "ewc", 60), _entry("B", "lwf", 50), _entry("B", "ewc", 60)]
    assert established_pairs(contested, "class_incremental") == []
    assert literature_directions(contested, "class_incremental") == {("ewc", "lwf"): 0.0}  # -10 and +10


def test_agreeing_share_tau_and_inversions_by_hand():
    testbed = {"joint": 90, "replay": 60, "lwf": 65, "finetune": 40}
    check = compare(HAND_BUILT, testbed, "class_incremental")
    outcomes = {(p.better, p.worse): (p.outcome, p.testbed_difference) for p in check.pairs}
    assert outcomes == {("joint", "lwf"): ("agree", 25), ("joint", "finetune"): ("agree", 50),
                        ("replay", "lwf"): ("inversion", -5), ("replay", "finetune"): ("agree", 20),
                        ("lwf", "finetune"): ("agree", 25)}
    assert check.share == pytest.approx(0.8)
    # all six pairs are ordered by the literature (joint/replay by the mean +6.5); only replay/lwf is discordant
    assert (check.tau, check.tau_pairs) == (pytest.approx(4 / 6), 6)
    assert [(p.better, p.worse, p.literature_difference) for p in check.inversions] == [("replay", "lwf", 16.0)]
    assert check.verdict == "PASS"  # 80 % agree, the one inversion is 5 points
    lines = literature.format_check(check)
    assert lines[0] == ("class_incremental: 4 of 5 established pairs agree (80 %), Kendall's tau +0.67 over 6 pairs, "
                        "1 inversion(s): PASS")
    assert lines[1] == ("  inversion: lwf ahead of replay by 5.0 points in the testbed; the literature puts replay "
                        "ahead by 16.0 points (2 group(s))")


def test_a_testbed_that_inverts_the_pairs_fails():
    check = compare(HAND_BUILT, {"joint": 40, "replay": 60, "lwf": 65, "finetune": 70}, "class_incremental")
    assert check.share == 0 and len(check.inversions) == 5
    assert (check.tau, check.tau_pairs) == (-1.0, 6)
    assert check.verdict == "FAIL"
    assert sorted(-p.testbed_difference for p in check.inversions) == [5, 5, 10, 25, 30]


def test_one_inversion_over_ten_points_fails_even_at_eighty_percent():
    check = compare(HAND_BUILT, {"joint": 90, "replay": 60, "lwf": 75, "finetune": 40}, "class_incremental")
    assert check.share == pytest.approx(0.8) and [p.testbed_difference for p in check.inversions] == [-15]
    assert check.verdict == "FAIL"


def test_ties_missing_runs_and_methods_mmcl_does_not_run():
    check = compare(HAND_BUILT, {"joint": 60, "replay": 60, "lwf": 60}, "class_incremental",
                    compatible=["joint", "replay", "finetune"])
    outcomes = {(p.better, p.worse): p.outcome for p in check.pairs}
    assert outcomes == {("joint", "lwf"): "not in mmcl", ("joint", "finetune"): "missing",
                        ("replay", "lwf"): "not in mmcl", ("replay", "finetune"): "missing",
                        ("lwf", "finetune"): "not in mmcl"}
    assert check.missing == ["finetune"] and check.not_in_mmcl == ["lwf"]
    assert check.share is None and check.verdict == "n/a"
    assert (check.tau, check.tau_pairs) == (0.0, 1)  # joint/replay: a testbed tie counts as neither
    tie = compare(HAND_BUILT, {"joint": 60, "lwf": 60}, "class_incremental")
    assert [p.outcome for p in tie.compared] == ["tie"] and tie.share == 0 and tie.verdict == "FAIL"


def test_kendall_tau_is_tau_a_on_a_total_order():
    directions = {("a", "b"): 1.0, ("a", "c"): 2.0, ("b", "c"): 1.0}  # a > b > c
    assert kendall_tau(directions, {"a": 3, "b": 2, "c": 1}) == (1.0, 3)
    assert kendall_tau(directions, {"a": 1, "b": 3, "c": 2}) == (pytest.approx(-1 / 3), 3)
    assert kendall_tau(directions, {"a": 1}) == (None, 0)


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _small_file(entries) -> dict:
    return {"sources": {"A": {"citation": "A et al. 2024", "url": "https://example.org/a", "read_from": "Table 1"}},
            "entries": entries}


def _fields(method="lwf", value=50.0, **extra):
    return {"source": "A", "table": "Table 1", "dataset": "D", "protocol": "10 tasks", "backbone": "ViT-B/16",
            "metric": "final_accuracy", "scenario": "class_incremental", "method": method, "value": value, **extra}


@pytest.mark.parametrize("entries, key", [
    ([_fields(), {k: v for k, v in _fields("ewc").items() if k != "value"}], "entries[1]: missing key 'value'"),
    ([_fields("nope")], "entries[0].method: 'nope' is not a registered method"),
    ([_fields(value="high")], "entries[0].value: expected a number of percent"),
    ([_fields(value=120)], "entries[0].value: expected a number of percent"),
    ([_fields(scenario="task_incremental")], "entries[0].scenario: 'task_incremental' is not one of"),
    ([_fields(metric="top5")], "entries[0].metric: 'top5' is not one of"),
    ([_fields(source="B")], "entries[0].source: 'B' is not a key of sources"),
    ([_fields(vaule=1)], "entries[0].vaule: unknown key"),
    ([_fields(), _fields(value=60)], "entries[1].in_check: 'lwf' already has an entry in the check"),
    ([_fields(in_check="no")], "entries[0].in_check: expected true or false"),
])
def test_a_bad_file_gives_one_line_naming_the_file_and_key(tmp_path, entries, key):
    path = _write(tmp_path / "literature.yaml", _small_file(entries))
    with pytest.raises(LiteratureError) as raised:
        literature.load_literature(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and key in message


def test_a_bad_source_or_bad_yaml_names_the_file(tmp_path):
    data = _small_file([_fields()])
    del data["sources"]["A"]["url"]
    path = _write(tmp_path / "a.yaml", data)
    with pytest.raises(LiteratureError, match=r"a\.yaml: sources\.A: missing key 'url'$"):
        literature.load_literature(path)
    broken = tmp_path / "b.yaml"
    broken.write_text("sources: {A: [\nentries: -\n")
    with pytest.raises(LiteratureError, match=r"b\.yaml: not valid YAML at line \d+"):
        literature.load_literature(broken)


# The CLI on fake run records of the tiny profile, checked against a small literature file.
CLI_LITERATURE = [_fields("joint", 90), _fields("replay", 70), _fields("lwf", 60), _fields("finetune", 40),
                  _fields("slca", 80),
                  {**_fields("joint", 80), "scenario": "domain_incremental"},
                  {**_fields("ewc", 70), "scenario": "domain_incremental"}]


def _final(root: Path, method: str, seed: int, final: float, scenario="class_incremental", benchmark="av-events"):
    write_run(root, method, seed, [[100, 0], [final, final]], scenario=scenario, benchmark=benchmark)


def test_the_cli_prints_the_check_of_each_scenario(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, shift in ((0, -2), (1, 2)):  # seed means: joint 85, replay 62, lwf 66, finetune 30
        _final(runs, "joint", seed, 85 + shift)
        _final(runs, "replay", seed, 62 + shift)
        _final(runs, "lwf", seed, 66 + shift)
        _final(runs, "finetune", seed, 30 + shift)
    _final(runs, "lwf", 0, 10.0, benchmark="ego-activities")  # not the scenario's main benchmark: ignored
    write_run(runs, "joint", 0, [[100, 0], [20, 20]], variant="no-distillation")  # a variant: ignored
    _final(runs, "joint", 0, 50, scenario="domain_incremental", benchmark="multilingual-emotion")
    _final(runs, "ewc", 0, 70, scenario="domain_incremental", benchmark="multilingual-emotion")
    file = _write(tmp_path / "literature.yaml", _small_file(CLI_LITERATURE))
    figures = tmp_path / "figures"
    code = main(["calibrate", "--literature", "--profile", "tiny", "--output-dir", str(runs),
                 "--table-dir", str(figures), "--literature-file", str(file)])
    out = capsys.readouterr().out.splitlines()
    # class-incremental: pairs joint>replay 20, joint>lwf 30, joint>finetune 50, joint>slca 10, replay>lwf 10,
    # replay>finetune 30, lwf>finetune 20, slca>replay 10, slca>lwf 20, slca>finetune 40 (slca has no runs);
    # testbed: replay < lwf by 4 (inversion), the five others agree: 5 of 6, tau (5 - 1) / 6
    assert out[1] == ("class_incremental (av-events): 5 of 6 established pairs agree (83 %), Kendall's tau +0.67 "
                      "over 6 pairs, 1 inversion(s): PASS")
    assert out[2] == ("  inversion: lwf ahead of replay by 4.0 points in the testbed; the literature puts replay "
                      "ahead by 10.0 points (1 group(s))")
    # domain-incremental: joint > ewc by 10 in the literature, ewc ahead by 20 in the testbed
    assert out[3] == ("domain_incremental (multilingual-emotion): 0 of 1 established pairs agree (0 %), "
                      "Kendall's tau -1.00 over 1 pairs, 1 inversion(s): FAIL")
    assert out[4] == ("  inversion: ewc ahead of joint by 20.0 points in the testbed; the literature puts joint "
                      "ahead by 10.0 points (1 group(s))")
    assert out[5] == ("modality_incremental (modality-stream): no established pair in the literature; "
                      "Kendall's tau: no pair to compare: n/a")
    assert out[6] == ("missing runs (class_incremental/av-events: slca): run `mmcl run --profile tiny --scenario "
                      "<scenario> --method <method> --seed 0` for each, or `mmcl reproduce --profile tiny`")
    assert code == 1  # a scenario fails
    summary = (figures / "calibration_literature_summary.csv").read_text()
    assert "class_incremental,av-events,10,6,83.3,0.667,6,1,PASS" in summary
    assert "modality_incremental,modality-stream,0,0,n/a,n/a,0,0,n/a" in summary
    pairs = (figures / "calibration_literature.csv").read_text()
    assert "domain_incremental,multilingual-emotion,joint > ewc,10.00,1,-20.00,inversion" in pairs
    assert (figures / "calibration_literature.md").read_text().count("| Class-incremental |") == 10


def test_the_cli_with_the_shipped_file_and_no_runs_names_what_to_run(tmp_path, capsys):
    assert main(["calibrate", "--literature", "--profile", "tiny", "--output-dir", str(tmp_path / "none"),
                 "--table-dir", str(tmp_path / "figures")]) == 0
    out = capsys.readouterr().out
    assert "class_incremental (av-events): no established pair with runs of both methods" in out
    assert "missing runs (class_incremental/av-events: " in out and "domain_incremental/multilingual-emotion: " in out
    assert "not run by mmcl in that scenario, their pairs skipped: class_incremental: l2p" in out


def test_the_cli_names_a_bad_literature_file_in_one_line(tmp_path, capsys):
    file = _write(tmp_path / "bad.yaml", _small_file([_fields("nope")]))
    assert main(["calibrate", "--literature", "--profile", "tiny", "--output-dir", str(tmp_path),
                 "--literature-file", str(file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmcl: error: {file}: entries[0].method: 'nope'") and "\n" not in err
