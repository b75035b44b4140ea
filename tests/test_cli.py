"""The ``mmcl`` command line: listing, a run, bench output and error exit codes."""
import re

from mmcl.cli import main


def test_list_shows_methods_scenarios_benchmarks_profiles(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("finetune", "replay", "modality_incremental", "av-events", "smoke"):
        assert expected in out


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
    assert "no variant 'nope' (its variants: no-distillation)" in capsys.readouterr().err
