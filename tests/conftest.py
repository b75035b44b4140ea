"""Shared fixtures. Every test runs offline on the smoke profile; caches (the pre-trained micro
backbone, generated benchmarks) live in one temporary folder per test session, or in
$MMCL_TEST_CACHE when set (to reuse them across sessions while developing)."""
from __future__ import annotations

import os

import pytest

from mmcl.config import load_config


@pytest.fixture(scope="session", autouse=True)
def mmcl_cache(tmp_path_factory):
    path = os.environ.get("MMCL_TEST_CACHE") or str(tmp_path_factory.mktemp("mmcl-cache"))
    os.environ["MMCL_CACHE"] = path
    return path


@pytest.fixture
def smoke_config(tmp_path):
    """The smoke profile writing runs under this test's temporary folder."""
    return load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}"])
