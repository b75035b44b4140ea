"""Executors (mmcl.executors): submitit's local executor runs one real subprocess job per run into
the same run folders, with the same numbers as the in-process sweep; only missing runs are
submitted again; failed jobs are listed with their logs; the SLURM job script renders without a
cluster."""
from __future__ import annotations

import json
import re
import shutil
import signal

import pytest

from mmcl import reproduce, results
from mmcl.config import ConfigError, load_config
from mmcl.executors import SweepFailed, make_executor, slurm_script


def _metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics["modes"], metrics["run"]["identity"]


def test_submitit_local_sweep_equals_the_in_process_sweep(tmp_path, capsys):
    local = load_config("smoke", [f"runtime.output_dir={tmp_path / 'local'}"])
    jobs = reproduce.sweep_jobs(local, "class_incremental", methods=["finetune", "replay"], seeds=[0])
    in_process = reproduce.run_sweep(local, "class_incremental", methods=["finetune", "replay"], seeds=[0])
    overrides = [f"runtime.output_dir={tmp_path / 'jobs'}", "runtime.executor.name=submitit-local",
                 "runtime.executor.parallelism=2"]
    submitted = load_config("smoke", overrides)
    capsys.readouterr()
    frame = reproduce.run_sweep(submitted, "class_incremental", methods=["finetune", "replay"], seeds=[0])
    out = capsys.readouterr().out
    assert "submitting 2 of 2 runs as submitit-local jobs" in out
    assert len(re.findall(r"^\[class_incremental \d/2\] .*: +\d+\.\d s, ETA .+$", out, re.M)) == 2
    for job in jobs:
        relative = f"smoke/class_incremental/av-events/{job['method']}/seed0"
        assert _metrics(tmp_path / "local" / relative) == _metrics(tmp_path / "jobs" / relative)
    # The same tables: every column of the main table agrees; run_versions and run_inputs (code, and
    # weights and data read) differ only by run folder.
    table = results.main_table(in_process, "class_incremental")
    other = results.main_table(frame, "class_incremental")
    by_run = ("run_versions", "run_inputs")
    assert [c for c in table if c not in by_run and not other[c].equals(table[c])] == []
    for column in by_run:
        assert [[v for _, v in row] for row in other[column]] == [[v for _, v in row] for row in table[column]]
    # Again: nothing is submitted. Without one run folder: only that run is.
    make_executor(submitted).run_jobs(submitted, jobs, None, "again")
    assert "submitting" not in capsys.readouterr().out
    shutil.rmtree(tmp_path / "jobs" / "smoke/class_incremental/av-events/replay/seed0")
    make_executor(submitted).run_jobs(submitted, jobs, None, "missing")
    out = capsys.readouterr().out
    assert "submitting 1 of 2 runs" in out and "[missing 1/2] class_incremental · av-events · finetune · seed 0: reused" in out
    assert (tmp_path / "jobs" / "smoke/class_incremental/av-events/replay/seed0/metrics.json").is_file()


def test_failed_jobs_are_listed_with_their_logs(tmp_path):
    # runtime.device does not change a run's identity, so the job is submitted and fails inside.
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.executor.name=submitit-local",
                                   "runtime.device=cuda:7"])
    jobs = [{"scenario": "class_incremental", "method": "finetune", "seed": 0}]
    with pytest.raises(SweepFailed) as failure:
        make_executor(config).run_jobs(config, jobs, None, "broken")
    message = str(failure.value)
    assert message.startswith("broken: 1 of 1 runs failed (submitit-local executor):\n  class_incremental · - · "
                              "finetune · seed 0: ")
    assert "CUDA is not available" in message
    log = re.search(r"log: (\S+)", message).group(1)
    assert log.startswith(str(tmp_path / "smoke" / "jobs")) and "CUDA is not available" in open(log).read()


def test_slurm_job_script_renders_without_a_cluster(tmp_path):
    config = load_config("smoke", ["runtime.executor.name=slurm", "runtime.executor.partition=gpu",
                                   "runtime.executor.mem_gb=32", "runtime.executor.parallelism=8",
                                   "runtime.executor.timeout_min=600", "runtime.executor.setup=['module load cuda']"])
    script = slurm_script(config.runtime.executor, tmp_path, 12)
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(.*)$", script, re.M))
    assert {k: directives[k] for k in ("partition", "array", "time", "gpus-per-node", "mem", "cpus-per-task")} == {
        "partition": "gpu", "array": "0-11%8", "time": "600", "gpus-per-node": "1", "mem": "32768MB",
        "cpus-per-task": "4"}
    assert all(line.startswith("#SBATCH --") for line in script.splitlines() if line.startswith("#SBATCH"))
    assert "module load cuda" in script and f"-m submitit.core._submit {tmp_path}" in script
    # No SLURM on this machine: the executor stops before any job, naming the rendered script.
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.executor.name=slurm"])
    with pytest.raises(ConfigError, match=r"no SLURM here .* is in .*slurm-job-preview\.sh"):
        make_executor(config).check(config, None)
    assert "#SBATCH --gpus-per-node=1" in (tmp_path / "smoke" / "jobs" / "slurm-job-preview.sh").read_text()


def test_cli_executor_flags_become_runtime_executor_keys(tmp_path, capsys):
    from mmcl.cli import main

    code = main(["reproduce", "--profile", "smoke", "--executor", "slurm", "--partition", "a100", "--gpus-per-node", "2",
                 "--output-dir", str(tmp_path), "--figures-dir", str(tmp_path / "figures")])
    assert code == 2
    assert "slurm-job-preview.sh" in capsys.readouterr().err
    script = (tmp_path / "smoke" / "jobs" / "slurm-job-preview.sh").read_text()
    assert "#SBATCH --partition=a100" in script and "#SBATCH --gpus-per-node=2" in script


def test_pool_sweep_equals_the_local_sweep_and_lists_failures(tmp_path, capsys):
    """The pool executor (2 single-threaded workers) gives the local executor's numbers, with the
    same progress lines; only missing runs go to a worker; a failed run is listed with its error."""
    from mmcl.executors import shutdown_pools

    methods = ["finetune", "replay"]
    local = load_config("smoke", [f"runtime.output_dir={tmp_path / 'local'}", "runtime.executor.name=local"])
    jobs = reproduce.sweep_jobs(local, "class_incremental", methods=methods, seeds=[0])
    reproduce.run_sweep(local, "class_incremental", methods=methods, seeds=[0])
    pooled = load_config("smoke", [f"runtime.output_dir={tmp_path / 'pool'}", "runtime.executor.name=pool",
                                   "runtime.executor.parallelism=2"])
    capsys.readouterr()
    try:
        reproduce.run_sweep(pooled, "class_incremental", methods=methods, seeds=[0])
        out = capsys.readouterr().out
        assert len(re.findall(r"^\[class_incremental \d/2\] class_incremental · av-events · \w+ · seed 0: +\d+\.\d s, ETA .+$",
                              out, re.M)) == 2
        for job in jobs:
            relative = f"smoke/class_incremental/av-events/{job['method']}/seed0"
            assert _metrics(tmp_path / "local" / relative) == _metrics(tmp_path / "pool" / relative)
        # Without one run folder: only that run goes to a worker, the other is reused here.
        shutil.rmtree(tmp_path / "pool" / "smoke/class_incremental/av-events/replay/seed0")
        make_executor(pooled).run_jobs(pooled, jobs, None, "missing")
        out = capsys.readouterr().out
        assert "[missing 1/2] class_incremental · av-events · finetune · seed 0: reused" in out
        assert re.search(r"^\[missing 2/2\] .* replay · seed 0: +\d+\.\d s, ETA 0 s$", out, re.M)
        # A run that fails inside its worker is listed with its error (runtime.device does not
        # change a run's identity, so the run is submitted and fails in the worker).
        broken = load_config("smoke", [f"runtime.output_dir={tmp_path / 'broken'}", "runtime.executor.name=pool",
                                       "runtime.executor.parallelism=2", "runtime.device=cuda:7"])
        with pytest.raises(SweepFailed) as failure:
            make_executor(broken).run_jobs(broken, jobs, None, "broken")
        message = str(failure.value)
        assert message.startswith("broken: 2 of 2 runs failed (pool executor):\n  class_incremental · av-events · "
                                  "finetune · seed 0: ConfigError: runtime.device: 'cuda:7' requested but CUDA is not "
                                  "available")
        # Workers ignore SIGINT: a Jupyter kernel shutting down interrupts its process group, and
        # idle workers printed a KeyboardInterrupt traceback each (seen at the end of every notebook).
        from mmcl.executors import worker_pool

        assert worker_pool(2).submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
    finally:
        shutdown_pools()


def test_auto_executor_is_the_pool_on_cpu_with_several_missing_runs_and_local_otherwise():
    from mmcl.executors import auto_executor_name

    config = load_config("smoke", [])
    assert auto_executor_name(config, missing=5, cores=2) == "pool"
    assert auto_executor_name(config, missing=1, cores=2) == "local"
    assert auto_executor_name(config, missing=5, cores=1) == "local"
    assert auto_executor_name(load_config("smoke", ["runtime.executor.parallelism=1"]), missing=5, cores=4) == "local"
    with pytest.raises(ConfigError, match="runtime.executor.parallelism"):
        load_config("smoke", ["runtime.executor.parallelism=0"])
