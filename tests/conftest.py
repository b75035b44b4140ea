"""Shared fixtures. Every test runs offline on the smoke profile; caches (the pre-trained micro
backbone, generated benchmarks, prefix tables) live in one temporary folder per test session, or in
$MMCL_TEST_CACHE when set (to reuse them across sessions while developing).

`make test` runs the suite on one pytest-xdist worker per core (``-n auto``, pyproject.toml). Each test
file goes to one worker (``--dist loadfile``: a module fixture is made once), every worker runs on
one thread, and the workers share the session's cache folder: each cache file is built by one of
them under a file lock (:func:`mmcl.records.build_lock`) and read by the others."""
from __future__ import annotations

import os

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a worker; None otherwise
if XDIST_WORKER:
    # One thread per worker (and per process a test starts): with one worker per core, threads of
    # one process would wait for each other at every operation (docs/performance.md). Set before
    # torch is imported, so its thread pools start with it.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import mmcl  # noqa: E402,F401 - first: pins the CPU kernels before numpy and torch load (mmcl.kernels)
import pytest  # noqa: E402
import torch  # noqa: E402

from mmcl.config import load_config  # noqa: E402

if XDIST_WORKER:
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def mmcl_cache(tmp_path_factory):
    path = os.environ.get("MMCL_TEST_CACHE")
    if not path:
        base = tmp_path_factory.getbasetemp()
        if XDIST_WORKER:  # <session temp>/popen-gw<k>: share the session's folder
            base = base.parent
        path = str(base / "mmcl-cache")
        os.makedirs(path, exist_ok=True)
    os.environ["MMCL_CACHE"] = path
    return path


@pytest.fixture
def smoke_config(tmp_path):
    """The smoke profile writing runs under this test's temporary folder."""
    return load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}"])


# The longest test files first (measured with --durations; about 5, 4.5, 4 and 1 minutes of one core):
# each file runs on one worker, and a long file handed out last would keep one worker busy long
# after the other one ran out of work (pyproject.toml keeps this order: --no-loadscope-reorder).
LONGEST_FIRST = ["test_notebooks.py", "test_tiny.py", "test_fault_injection.py", "test_executors.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
