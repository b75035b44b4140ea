"""The ``mmcl`` command line: listing, a run, bench output and error exit codes."""
import json
import re
import subprocess
import sys

from pathlib import Path

from mmcl import method_index, reproduce, results
from mmcl.cli import _list, main, package_version

HEAVY = ("torch", "open_clip", "numpy", "pandas", "mmcl.methods")


def test_list_shows_methods_scenarios_benchmarks_profiles(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("finetune", "replay", "modality_incremental", "av-events", "smoke"):
        assert expected in out


def test_list_help_and_version_import_no_heavy_library():
    # A listing, the help and the version are instant: no torch, open_clip, numpy or pandas (seconds).
    script = f"""
import contextlib, io, sys
import mmcl  # pins the CPU kernels: environment variables only
assert not [m for m in {HEAVY!r} if m in sys.modules]
from mmcl.cli import main
for argv in (["list"], ["list", "methods"], ["--help"], ["list", "--help"], ["--version"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    assert code in (0, None), (argv, code)
    assert out.getvalue().strip(), argv
    if argv == ["--version"]:
        print(out.getvalue().strip())
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"mmcl {package_version()}", "[]"]


def test_version_is_the_package_version():
    done = subprocess.run([sys.executable, "-m", "mmcl.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and re.fullmatch(r"mmcl \d+\.\d+\S*\n", done.stdout), (done.stdout, done.stderr)
    assert done.stdout.split()[1] == package_version()


def test_method_index_is_the_registry():
    # mmcl/methods/index.json is what `mmcl list` reads; a method changed without regenerating it fails here.
    assert method_index.INDEX_FILE.read_text(encoding="utf-8") == method_index.render(), \
        "mmcl/methods/index.json is stale: regenerate it with `python -m mmcl.method_index`"
    from mmcl.methods import REGISTRY

    assert list(method_index.methods()) == sorted(REGISTRY)
    assert _list("methods", "tiny") == _list("methods", "tiny", method_index.from_registry())


def test_run_writes_a_record_and_prints_metrics(tmp_path, capsys):
    code = main(["run", "--scenario", "domain_incremental", "--method", "lwf", "--profile", "smoke",
                 "--seed", "0", "--seed", "1", "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("finished:") == 2 and "forgetting" in out
    assert (tmp_path / "smoke" / "domain_incremental" / "multilingual-emotion" / "lwf" / "seed1" / "metrics.json").is_file()
    assert main(["run", "--scenario", "domain_incremental", "--method", "lwf", "--profile", "smoke",
                 "--seed", "1", "--output-dir", str(tmp_path)]) == 0
    assert "reused complete run" in capsys.readouterr().out


def test_bench_reports_throughput_beside_the_floor(capsys):
    assert main(["bench", "--method", "replay", "--profile", "smoke", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    train = float(re.search(r"training step\s+([\d.]+) samples/s", out).group(1))
    floor = float(re.search(r"frozen forward\s+([\d.]+) samples/s", out).group(1))
    assert 0 < train < floor  # a training step cannot beat the frozen forward pass


def test_errors_exit_with_a_message(capsys):
    assert main(["run", "--scenario", "class_incremental", "--method", "nope", "--profile", "smoke"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["run", "--scenario", "class_incremental", "--method", "lwf", "--profile", "smoke",
                 "--set", "train.epochz=1"]) == 2
    assert "train.epochz: unknown key" in capsys.readouterr().err


def test_variants_run_to_their_own_folder_and_bench_with_their_overrides(tmp_path, capsys):
    assert main(["run", "--scenario", "domain_incremental", "--method", "lwf", "--variant", "no-distillation",
                 "--profile", "smoke", "--output-dir", str(tmp_path)]) == 0
    run_dir = tmp_path / "smoke" / "domain_incremental" / "multilingual-emotion" / "lwf~no-distillation" / "seed0"
    assert (run_dir / "metrics.json").is_file()
    assert "distillation_weight: 0.0" in (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["bench", "--method", "moe-adapters", "--variant", "adapter-finetune", "--profile", "smoke",
                 "--steps", "2", "--json"]) == 0
    assert '"variant": "adapter-finetune"' in capsys.readouterr().out
    assert main(["bench", "--method", "lwf", "--variant", "nope", "--profile", "smoke"]) == 2
    assert "no variant 'nope' (its variants: frozen-head, no-distillation)" in capsys.readouterr().err


def test_readme_example_with_another_buffer_budget_is_a_new_run_and_its_own_row(tmp_path, capsys):
    base = ["run", "--scenario", "class_incremental", "--method", "replay", "--seed", "0", "--profile", "smoke",
            "--output-dir", str(tmp_path)]
    assert main(base) == 0
    assert main([*base, "--set", "methods.replay.per_class=2"]) == 0
    out = capsys.readouterr().out
    assert "reused" not in out and out.count("finished:") == 2
    folders = re.findall(r"finished: (\S+)", out)
    assert folders[0].endswith("/replay/seed0") and re.search(r"/replay@[0-9a-f]{8}/seed0$", folders[1])
    assert main([*base, "--set", "methods.replay.per_class=2"]) == 0
    assert f"reused complete run: {folders[1]}" in capsys.readouterr().out

    table = results.main_table(results.load_runs(tmp_path), "class_incremental")
    assert list(table["method"]) == ["replay", "replay (per_class=2)"]
    assert table["seeds"].tolist() == [1, 1]
    finals = [json.loads((Path(folder) / "metrics.json").read_text())["modes"]["standard"]["final_accuracy"]
              for folder in folders]
    assert table["final_accuracy_mean"].tolist() == finals and finals[0] != finals[1]


def test_stale_runs_are_reported_and_rerun_stale_removes_them(tmp_path, capsys, monkeypatch):
    for method in ("zero-shot", "finetune"):
        assert main(["run", "--scenario", "class_incremental", "--method", method, "--profile", "smoke",
                     "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    stale = tmp_path / "smoke" / "class_incremental" / "av-events" / "finetune" / "seed0"
    metrics = json.loads((stale / "metrics.json").read_text())
    metrics["run"]["source_fingerprint"] = "0123456789ab"  # as if made before a change of the code
    (stale / "metrics.json").write_text(json.dumps(metrics))

    assert main(["run", "--scenario", "class_incremental", "--method", "finetune", "--profile", "smoke",
                 "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "reused complete run" in captured.out
    assert f"warning: {stale} was made by other code (source 0123456789ab" in captured.err
    assert len(captured.err.strip().splitlines()) == 1

    executed = []  # the notebooks themselves are tested in test_notebooks; here only the scan
    monkeypatch.setattr(reproduce, "execute_notebook", lambda name, *args, **kwargs: executed.append(name) or 0.0)
    reproduce_command = ["reproduce", "--profile", "smoke", "--output-dir", str(tmp_path), "--only", "00_data_prep",
                         "--figures-dir", str(tmp_path / "figures")]
    assert main(reproduce_command) == 0
    out = capsys.readouterr().out
    assert "1 of 2 complete runs" in out and "class_incremental/av-events/finetune/seed0  source 0123456789ab" in out
    assert "--rerun-stale" in out and stale.is_dir()
    assert main([*reproduce_command, "--rerun-stale"]) == 0
    out = capsys.readouterr().out
    assert "--rerun-stale: removed 1 run folder;" in out and not stale.exists()
    assert (tmp_path / "smoke" / "class_incremental" / "av-events" / "zero-shot" / "seed0" / "metrics.json").is_file()
    assert main(reproduce_command) == 0
    assert "made by other code" not in capsys.readouterr().out
    assert executed == ["00_data_prep"] * 3
