"""Writes the storage refuses: a full disk, a quota, a read-only or unwritable output folder.

Each refusal is a real failing write: an ``OSError`` raised inside the atomic write, after its
temporary is written (``MMCL_FAULT=enospc:<n>`` and its kin, see :func:`mmcl.atomic.disk_fault`),
or a folder the operating system will not write (mode 0o555; a file where the folder should be).
Every time: one line naming the file (``mmcl: error: ... writing <file>``, exit status 2, or
a :class:`~mmcl.atomic.DiskWriteError` in the library), no half-written file under a final name,
no temporary left behind, and the same command afterwards resumes to the numbers of an
uninterrupted run.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
from test_data_prep import make_ave
from test_fault_injection import (ReferenceRuns, assert_no_half_written_record, assert_same_run, mmcl_run,
                                  temporaries, the_run_folder)
from test_results import write_run

from data_prep.__main__ import main as data_prep_main
from mmcl import atomic, cli, engine, plots, records, reproduce, results
from mmcl.config import load_config
from mmcl.models.factory import build_encoder

KINDS = list(atomic.DISK_FAULTS.items())  # (MMCL_FAULT kind, errno): enospc, edquot, erofs, eacces


def reason(code: int) -> str:
    """The operating system's words for ``code``, as a DiskWriteError starts: ``no space left on device``."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def refuse_write(monkeypatch, fault: str) -> None:
    """Make this process's atomic writes fail as ``MMCL_FAULT=fault`` says, counting from the next one."""
    monkeypatch.setenv(atomic.FAULT_VARIABLE, fault)
    monkeypatch.setattr(atomic, "_atomic_writes", 0)


def writes_all_the_same(folder: Path) -> bool:
    """Whether this process can create a file in ``folder`` although its mode forbids it (root can)."""
    probe = folder / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return False
    probe.unlink()
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> ReferenceRuns:
    return ReferenceRuns(tmp_path_factory)


# ----------------------------------------------------------------------------------- runs
def test_every_write_of_a_run_refused_in_turn_then_the_rerun_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """In this process, one smoke run per write: its n-th atomic write fails (the kinds of
    refusal in turn), then the same run without the fault must finish with the numbers of an
    uninterrupted run. n goes up until a run has no n-th write left to fail."""
    uninterrupted = engine.run(load_config("smoke", [f"runtime.output_dir={tmp_path / 'reference'}"]),
                               "class_incremental", "finetune", seed=0)  # also fills the caches: only the run writes
    refused_files = []
    for n in range(1, 30):
        kind, code = KINDS[(n - 1) % len(KINDS)]
        output_dir = tmp_path / f"write-{n}"
        config = load_config("smoke", [f"runtime.output_dir={output_dir}"])
        refuse_write(monkeypatch, f"{kind}:{n}")
        try:
            engine.run(config, "class_incremental", "finetune", seed=0)
            break  # the run made fewer than n writes: each one has been refused once
        except atomic.DiskWriteError as error:
            refusal = error
        monkeypatch.delenv(atomic.FAULT_VARIABLE)
        run_dir = the_run_folder(output_dir)
        assert refusal.errno == code and str(refusal) == f"{reason(code)} writing {refusal.filename}"
        refused_files.append(Path(refusal.filename).relative_to(run_dir).as_posix())
        assert not records.is_complete(run_dir) and not temporaries(run_dir)
        assert_no_half_written_record(run_dir)

        engine.run(config, "class_incremental", "finetune", seed=0)
        assert_same_run(run_dir, uninterrupted.run_dir)
    else:
        pytest.fail(f"the run still had a write to refuse after {n} writes")
    assert refused_files[-1] == "metrics.json", refused_files
    assert {"config.yaml", "manifest.json", "tasks.jsonl", "checkpoints/task_0.pt", "checkpoints/task_1.pt"} \
        <= set(refused_files), refused_files


def test_mmcl_run_on_a_full_disk_says_so_in_one_line_then_the_same_command_resumes(reference, tmp_path):
    """A real ``mmcl run`` whose 7th write (task 1's checkpoint, in a run whose caches exist)
    finds the disk full; the same command without the fault resumes after task 0."""
    reference_dir = reference("finetune")  # also fills the caches: the run's own writes are the only ones
    refused = mmcl_run(tmp_path, "finetune", fault="enospc:7")
    run_dir = the_run_folder(tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"mmcl: error: no space left on device writing {run_dir / 'checkpoints' / 'task_1.pt'}"]
    assert not records.is_complete(run_dir) and not temporaries(run_dir)
    assert_no_half_written_record(run_dir)
    assert len(records.read_jsonl(run_dir / "tasks.jsonl")) == 1

    resumed = mmcl_run(tmp_path, "finetune")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference_dir)


@pytest.mark.parametrize("unwritable", ["read-only folder", "file in the way"])
def test_mmcl_run_into_an_unwritable_output_folder_says_so_in_one_line(reference, tmp_path, unwritable):
    output_dir = tmp_path / "runs"
    if unwritable == "read-only folder":
        output_dir.mkdir()
        output_dir.chmod(0o555)
        if writes_all_the_same(output_dir):
            output_dir.chmod(0o755)
            pytest.skip("this process writes into a 0o555 folder all the same (root, with CAP_DAC_OVERRIDE); "
                        "'file in the way' refuses it for real")
        words = "permission denied"
    else:
        output_dir.write_text("a file where the runs folder should be\n")
        words = "not a directory"
    reference("finetune")  # fills the caches: the run stops at its first write of the output folder
    try:
        refused = mmcl_run(output_dir, "finetune")
    finally:
        if output_dir.is_dir():
            output_dir.chmod(0o755)  # for pytest to delete it
    lock = records.run_directory(output_dir, "smoke", "class_incremental", "av-events", "finetune", 0) / ".lock"
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [f"mmcl: error: {words} writing {lock}"]
    assert (list(output_dir.iterdir()) == [] if output_dir.is_dir()
            else output_dir.read_text() == "a file where the runs folder should be\n")


def test_a_refused_write_in_a_notebook_cell_is_the_cells_one_line_error(tmp_path):
    """What ``mmcl reproduce`` reports when a cell's write is refused (the file has a file as its folder)."""
    target = tmp_path / "runs" / "seed0" / "metrics.json"
    (tmp_path / "runs").write_text("")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(f"from mmcl import atomic\natomic.atomic_write_text({str(target)!r}, '{{}}')")]
    nbformat.write(notebook, tmp_path / "99_disk.ipynb")
    with pytest.raises(reproduce.NotebookFailed) as failed:
        reproduce.execute_notebook("99_disk", tmp_path / "out" / "99_disk.ipynb", {}, notebook_dir=tmp_path,
                                   log_output=False)
    assert f"  DiskWriteError: not a directory writing {target}" in str(failed.value).splitlines()


# ------------------------------------------------------------------------ data and caches
def test_data_prep_on_a_full_disk_says_so_in_one_line_then_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    raw = make_ave(tmp_path / "raw", classes=2, train=3, test=1, corrupt=False)

    def prepare(out: Path) -> int:
        return data_prep_main(["ave", "--raw", str(raw), "--out", str(out), "--profile", "smoke", "--quiet",
                               "--shard-size", "2"])

    assert prepare(tmp_path / "reference") == 0
    out = tmp_path / "ave"
    capsys.readouterr()
    refuse_write(monkeypatch, "enospc:4")  # progress.json, train shard 0, progress.json, train shard 1
    assert prepare(out) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: no space left on device writing {out / '.work' / 'train-00001.pt'}"
    assert not list(out.rglob("*.tmp")) and not (out / "meta.json").exists()
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["progress.json", "train-00000.pt"]
    assert list(records.read_json(out / ".work" / "progress.json")["done"]) == ["train-00000.pt"]
    torch.load(out / ".work" / "train-00000.pt", weights_only=True)

    monkeypatch.delenv(atomic.FAULT_VARIABLE)
    assert prepare(out) == 0
    assert "resumed: 1 shards" in capsys.readouterr().out
    for split in ("train.pt", "val.pt", "test.pt"):
        assert (out / split).read_bytes() == (tmp_path / "reference" / split).read_bytes(), split

    blocked = tmp_path / "blocked"  # a real refusal: a file where --out's parent folder should be
    blocked.write_text("")
    assert prepare(blocked / "ave") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: not a directory writing {blocked / 'ave' / 'meta.json'}"


def test_a_full_disk_leaves_no_pretrained_backbone_in_the_cache_and_the_next_build_writes_it(tmp_path, monkeypatch):
    def config(cache: str):
        return load_config("smoke", [f"data.cache_dir={tmp_path / cache}", "model.pretrain.steps=5"])

    uninterrupted = build_encoder(config("reference")).state_dict()
    refuse_write(monkeypatch, "enospc")  # every write
    with pytest.raises(atomic.DiskWriteError) as refused:
        build_encoder(config("cache"))
    cached = Path(refused.value.filename)
    assert str(refused.value) == f"no space left on device writing {cached}"
    assert cached.parent == tmp_path / "cache" / "backbones" and not cached.exists()
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    monkeypatch.delenv(atomic.FAULT_VARIABLE)
    rebuilt = build_encoder(config("cache")).state_dict()
    assert cached.is_file()
    assert rebuilt.keys() == uninterrupted.keys()
    assert all(torch.equal(rebuilt[key], uninterrupted[key]) for key in uninterrupted)


# ---------------------------------------------------------------------- tables and figures
@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, "finetune", seed, [[100, 0], [60 + 10 * seed, 60]])
        write_run(root, "lwf", seed, [[100, 0], [90, 90 - seed]])
        write_run(root, "lwf", seed, [[100, 0], [50, 50 + seed]], variant="no-distillation")
    return root


def test_a_refused_table_write_names_the_file_and_leaves_no_half_written_table(runs, tmp_path, monkeypatch,
                                                                               capsys):
    frame = results.load_runs(runs)
    reference = results.write_tables(frame, tmp_path / "reference")
    figures = tmp_path / "figures"
    refuse_write(monkeypatch, "enospc:2")  # the first table's CSV is written, its LaTeX is refused
    with pytest.raises(atomic.DiskWriteError) as refused:
        results.write_tables(frame, figures)
    assert str(refused.value) == f"no space left on device writing {figures / 'main_class_incremental.tex'}"
    assert [p.name for p in figures.iterdir()] == ["main_class_incremental.csv"]  # complete; no temporary
    assert (figures / "main_class_incremental.csv").read_bytes() == \
        reference["main_class_incremental"]["csv"].read_bytes()

    monkeypatch.delenv(atomic.FAULT_VARIABLE)
    written = results.write_tables(frame, figures)
    assert {name: {kind: path.read_bytes() for kind, path in paths.items()} for name, paths in written.items()} == \
        {name: {kind: path.read_bytes() for kind, path in paths.items()} for name, paths in reference.items()}

    blocked = tmp_path / "blocked"  # from the command line, a real refusal: a file where the folder should be
    blocked.write_text("")
    capsys.readouterr()
    assert cli.main(["claims", "--profile", "tiny", "--output-dir", str(runs), "--figures-dir",
                     str(blocked / "figures")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mmcl: error: not a directory writing {blocked / 'figures' / 'claims.csv'}"]


def test_a_refused_figure_write_leaves_no_half_written_figure_and_no_open_figure(runs, tmp_path, monkeypatch):
    frame = results.load_runs(runs)
    figures = tmp_path / "figures"
    refuse_write(monkeypatch, "enospc:2")  # the first figure's PNG is written, its PDF is refused
    with pytest.raises(atomic.DiskWriteError) as refused:
        plots.write_figures(frame, figures)
    (png,) = figures.iterdir()  # complete; no temporary
    assert png.suffix == ".png" and str(refused.value) == \
        f"no space left on device writing {png.with_suffix('.pdf')}"
    assert not plt.get_fignums()

    monkeypatch.delenv(atomic.FAULT_VARIABLE)
    written = plots.write_figures(frame, figures)
    assert sorted(figures.iterdir()) == sorted(path for paths in written.values() for path in paths)
