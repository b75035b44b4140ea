"""Every notebook executed with papermill on the smoke profile, through ``mmcl.reproduce``.

One reproduction of the whole sequence (module fixture) into a temporary folder; the tests then
check what it left: executed notebooks next to the runs, tables and figures. To stay within about
a minute and a half on two CPU cores, it uses one seed, one class-incremental benchmark and the
ablations of one method; every registered method compatible with a scenario still runs, so a
method that breaks a notebook fails here.

nbval then validates the executed notebooks (``--nbval-lax``): it executes them again, cell by cell,
so a notebook that no longer runs fails by its cell, and compares the outputs of the cells marked
``# NBVAL_CHECK_OUTPUT`` with papermill's (sanitised by ``tests/nbval_sanitize.cfg``). Every run is
complete by then, so the second execution reuses them: it costs the kernels, tables and figures.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mmcl import reproduce, results
from mmcl.config import SCENARIOS, ConfigError, load_config

SMOKE_PARAMETERS = {"10_class_incremental": {"benchmarks": ["av-events"]}, "20_ablations": {"methods": ["lwf"]}}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, mmcl_cache):
    root = tmp_path_factory.mktemp("reproduce")
    timings = reproduce.reproduce("smoke", output_dir=root / "runs", figures_dir=root / "figures", seeds=[0],
                                  extra_parameters=SMOKE_PARAMETERS)
    return root, timings


def test_notebooks_have_one_parameters_cell_and_no_outputs():
    sources = {reproduce.notebook_source(name)[0] for name in reproduce.NOTEBOOKS}
    assert sorted(p.name for p in sources) == sorted(p.name for p in reproduce.NOTEBOOK_DIR.glob("*.ipynb"))
    for source in sources:
        notebook = nbformat.read(source, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, source.name
        assert "profile" in tagged[0].source
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{source.name} has outputs"


def test_the_scenario_notebooks_are_one_source_with_the_scenario_injected(tmp_path):
    declared = {}
    source = reproduce.NOTEBOOK_DIR / f"{reproduce.SCENARIO_NOTEBOOK}.ipynb"
    cell = next(c for c in nbformat.read(source, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    exec(cell.source, {}, declared)
    assert declared["scenario"] == "class_incremental"
    for name, scenario in reproduce.SCENARIO_OF_NOTEBOOK.items():
        assert reproduce.notebook_source(name) == (source, {"scenario": scenario})
        parameters = reproduce.notebook_parameters(name, "smoke", [], tmp_path, tmp_path, [0])
        assert parameters["scenario"] == scenario and set(parameters) <= set(declared)
    assert set(reproduce.SCENARIO_OF_NOTEBOOK.values()) == set(SCENARIOS)
    with pytest.raises(ConfigError, match="10_scenario runs as 10_class_incremental, 11_domain_incremental"):
        reproduce.reproduce("smoke", output_dir=tmp_path, notebooks=["10_scenario"])


def test_every_notebook_runs_on_smoke(reproduced):
    root, timings = reproduced
    assert list(timings) == list(reproduce.NOTEBOOKS)
    executed = root / "runs" / "smoke" / "notebooks"
    for name in reproduce.NOTEBOOKS:
        notebook = nbformat.read(executed / f"{name}.ipynb", as_version=4)
        assert notebook.metadata["papermill"]["exception"] in (None, False), name
        assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), name
        scenario = reproduce.SCENARIO_OF_NOTEBOOK.get(name)
        if scenario:  # the one scenario source, run with its scenario: its title, its table
            assert notebook.metadata["papermill"]["parameters"]["scenario"] == scenario, name
            shown = json.dumps([c.get("outputs", []) for c in notebook.cells])
            assert f"{results.SCENARIO_TITLES[scenario]} learning" in shown, name
            assert "text/html" in shown, f"{name} shows no table"


def test_every_plot_cell_shows_its_figure(reproduced):
    # The PNG files are written either way; a reader stepping through a notebook sees only what the
    # cell shows (matplotlib's rc_context used to switch the inline backend's interactive mode off
    # after the first figure, leaving every later plot cell empty).
    root, _ = reproduced
    executed = root / "runs" / "smoke" / "notebooks"
    plot_cells = 0
    for name in reproduce.NOTEBOOKS:
        for index, cell in enumerate(nbformat.read(executed / f"{name}.ipynb", as_version=4).cells):
            if cell.cell_type == "code" and "plots.plot_" in cell.source:
                shown = [o for o in cell.outputs if "image/png" in o.get("data", {})]
                guard = re.match(r'if scenario == "(\w+)"', cell.source)  # a figure of one scenario alone
                if guard and guard.group(1) != reproduce.SCENARIO_OF_NOTEBOOK.get(name):
                    assert not shown, f"{name}.ipynb cell {index} is for {guard.group(1)} only"
                    continue
                plot_cells += 1
                assert shown, f"{name}.ipynb cell {index} draws a figure but shows none: {cell.source[:80]!r}"
    assert plot_cells >= 12


def test_runs_tables_and_figures_are_written(reproduced):
    root, _ = reproduced
    runs = root / "runs" / "smoke"
    for scenario, benchmark in (("class_incremental", "av-events"), ("domain_incremental", "multilingual-emotion"),
                                ("modality_incremental", "modality-stream")):
        for method in reproduce.compatible_methods(scenario):
            assert (runs / scenario / benchmark / method / "seed0" / "metrics.json").is_file(), (scenario, method)
    assert (runs / "class_incremental" / "av-events" / "lwf~no-distillation" / "seed0" / "metrics.json").is_file()
    figures = root / "figures"
    for table in ("main_class_incremental", "main_domain_incremental", "main_modality_incremental", "ablations",
                  "appendix_domain_incremental", "forgetting_decomposition"):
        for suffix in (".csv", ".tex", ".md"):
            assert (figures / f"{table}{suffix}").is_file(), table + suffix
    assert "multilingual-emotion-stress" not in (figures / "main_domain_incremental.md").read_text()
    assert "multilingual-emotion-stress" in (figures / "appendix_domain_incremental.md").read_text()
    claims_csv = (figures / "claims.csv").read_text()
    assert claims_csv.startswith("paper,claim,") and "moe-adapters" in claims_csv and "comm" in claims_csv
    assert (figures / "claims.md").read_text().startswith("# Claims of the papers, measured")
    for figure in ("accuracy_curves_class_incremental", "forgetting_modality_incremental", "modality_accuracy",
                   "accuracy_matrix_domain_incremental_multilingual-emotion", "ablations_lwf",
                   "forgetting_decomposition_class_incremental", "forgetting_decomposition_modality_incremental"):
        for suffix in (".png", ".pdf"):
            assert (figures / f"{figure}{suffix}").is_file(), figure + suffix


def test_executed_notebooks_pass_nbval(reproduced):
    root, _ = reproduced
    executed = sorted((root / "runs" / "smoke" / "notebooks").glob("*.ipynb"))
    assert [p.stem for p in executed] == list(reproduce.NOTEBOOKS)
    sanitize = Path(__file__).parent / "nbval_sanitize.cfg"
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with",
               str(sanitize), "-p", "no:cacheprovider", "-q", "--rootdir", str(executed[0].parent),
               *map(str, executed)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # Every code cell is an nbval item (the injected parameters too); none was skipped.
    cells = sum(c.cell_type == "code" for p in executed for c in nbformat.read(p, as_version=4).cells)
    assert f"{cells} passed" in done.stdout, done.stdout[-2000:]


def test_a_second_reproduction_skips_up_to_date_notebooks(reproduced):
    root, _ = reproduced
    again = reproduce.reproduce("smoke", output_dir=root / "runs", figures_dir=root / "figures", seeds=[0],
                                extra_parameters=SMOKE_PARAMETERS)
    assert set(again.values()) == {0.0}
    # Other parameters (here: another seed) make the notebooks that would run new runs stale.
    assert not reproduce.up_to_date("11_domain_incremental",
                                    root / "runs" / "smoke" / "notebooks" / "11_domain_incremental.ipynb",
                                    reproduce.notebook_parameters("11_domain_incremental", "smoke",
                                                                  ["runtime.progress=false"], root / "runs",
                                                                  root / "figures", [1]))


def test_a_failing_cell_is_reported_with_notebook_and_cell(tmp_path, mmcl_cache):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nbformat.write(notebook, tmp_path / "99_broken.ipynb")
    with pytest.raises(reproduce.NotebookFailed, match=r"99_broken\.ipynb failed in cell 1.*broken on purpose"):
        reproduce.execute_notebook("99_broken", tmp_path / "out" / "99_broken.ipynb", {}, notebook_dir=tmp_path,
                                   log_output=False)
    assert json.loads((tmp_path / "out" / "99_broken.ipynb").read_text())["metadata"]["papermill"]["exception"]


def test_a_notebook_that_ran_well_leaves_no_error_in_the_log(tmp_path, capfd):
    """After the last cell papermill asks the kernel for its info and shuts it down as soon as the
    reply arrives, while the kernel may still be in that request's handler, where SIGINT raises: an
    interrupt then makes ipykernel log "KeyboardInterrupt caught in kernel." (once seen after the
    data-preparation notebook). Here the handler lingers a second after its reply, as a kernel
    descheduled at that moment does, so that such an interrupt cannot miss it."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(
        "import time\n"
        "kernel = get_ipython().kernel\n"
        "reply = kernel.shell_handlers['kernel_info_request']\n"
        "async def reply_then_linger(*args):\n"
        "    await reply(*args)\n"
        "    time.sleep(1)\n"
        "kernel.shell_handlers['kernel_info_request'] = reply_then_linger")]
    nbformat.write(notebook, tmp_path / "99_lingering.ipynb")
    reproduce.execute_notebook("99_lingering", tmp_path / "out" / "99_lingering.ipynb", {}, notebook_dir=tmp_path,
                               log_output=False)
    log = capfd.readouterr().err  # the kernel's own log goes to the stderr it inherits
    assert not [line for line in log.splitlines() if "ERROR" in line or "KeyboardInterrupt" in line], log


def test_default_methods_are_every_compatible_registered_method():
    from mmcl.methods import REGISTRY

    for scenario in ("class_incremental", "domain_incremental", "modality_incremental"):
        expected = {n for n, cls in REGISTRY.items() if scenario in cls.compatible_scenarios}
        assert set(reproduce.compatible_methods(scenario)) == expected
    assert "zero-shot" in reproduce.compatible_methods("class_incremental", ["zero-shot"])


def test_ablation_jobs_cover_every_declared_variant(smoke_config):
    from mmcl.methods import REGISTRY

    jobs = reproduce.ablation_jobs(smoke_config, seeds=[0, 1])
    for name, cls in REGISTRY.items():
        variants = {job["variant"] for job in jobs if job["method"] == name}
        assert variants == (set(cls.ablations) | {None} if cls.ablations else set()), name
    lwf = [job for job in jobs if job["method"] == "lwf" and job["variant"] == "no-distillation"]
    assert [job["seed"] for job in lwf] == [0, 1]
    assert lwf[0]["hparams"] == REGISTRY["lwf"].ablations["no-distillation"]


def test_ablations_also_run_on_the_scenarios_further_benchmarks(tmp_path):
    from mmcl.methods import REGISTRY

    config = load_config("smoke", [f"runtime.output_dir={tmp_path}",
                                   "scenarios.modality_incremental.ablations_also_on=[modality-stream-recurring]"])
    jobs = [job for job in reproduce.ablation_jobs(config, methods=["comm"]) if job["method"] == "comm"]
    per_benchmark = {b: {job["variant"] for job in jobs if job["benchmark"] == b}
                     for b in ("modality-stream", "modality-stream-recurring")}
    assert per_benchmark["modality-stream"] == per_benchmark["modality-stream-recurring"] \
        == set(REGISTRY["comm"].ablations) | {None}
    with pytest.raises(ConfigError, match="scenarios.modality_incremental.ablations_also_on.0"):
        load_config("smoke", ["scenarios.modality_incremental.ablations_also_on=[nope]"])
