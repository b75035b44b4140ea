"""The code version of a run (:func:`mmcl.records.code_version`): the git commit and whether the code
differs from it. What the pipeline itself writes (the claims blocks of docs/methods/*.md, figures)
does not make the code dirty; a change to the package or the notebooks does."""
import subprocess

import pytest

from mmcl import records


def _git(checkout, *arguments):
    subprocess.run(["git", "-c", "user.name=mmcl", "-c", "user.email=mmcl@example.org", *arguments],
                   cwd=checkout, check=True, capture_output=True, text=True)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A committed checkout of a package's layout, with records.PACKAGE_DIR pointing into it."""
    files = {"mmcl/__init__.py": "", "mmcl/engine.py": "STEPS = 1\n", "mmcl/profiles/tiny.yaml": "seed: 0\n",
             "notebooks/10_scenario.ipynb": "{}\n", "pyproject.toml": "[project]\n",
             "docs/methods/comm.md": "<!-- claims -->\nold\n", "docs/benchmark.md": "calibration\n",
             "README.md": "readme\n", "figures/README.md": "figures\n", "tests/test_engine.py": "\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "code")
    monkeypatch.setattr(records, "PACKAGE_DIR", (tmp_path / "mmcl").resolve())
    yield tmp_path
    records.git_state.cache_clear()  # the real checkout's state again for later tests


def _dirty():
    records.git_state.cache_clear()
    commit, dirty = records.git_state()
    assert commit is not None and len(commit) == 40
    return dirty


def test_pipeline_outputs_leave_the_code_clean_and_code_changes_make_it_dirty(checkout):
    assert _dirty() is False
    # What `make reproduce` rewrites (claims blocks, the calibration block, figures), and other docs and tests.
    for name in ("docs/methods/comm.md", "docs/benchmark.md", "figures/README.md", "README.md", "tests/test_engine.py"):
        (checkout / name).write_text((checkout / name).read_text() + "new\n")
    assert _dirty() is False

    notebook = checkout / "notebooks" / "10_scenario.ipynb"
    notebook.write_text('{"cells": []}\n')
    assert _dirty() is True
    notebook.write_text("{}\n")
    assert _dirty() is False

    (checkout / "mmcl" / "engine.py").write_text("STEPS = 2\n")
    assert _dirty() is True
    records.git_state.cache_clear()
    assert records.code_version()["git_dirty"] is True


def test_outside_a_checkout_the_code_version_is_unknown(tmp_path, monkeypatch):
    (tmp_path / "mmcl").mkdir()
    (tmp_path / "mmcl" / "__init__.py").write_text("")
    monkeypatch.setattr(records, "PACKAGE_DIR", tmp_path / "mmcl")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    records.git_state.cache_clear()
    try:
        assert records.git_state() == (None, None)
    finally:
        records.git_state.cache_clear()
