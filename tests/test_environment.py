"""The environment lock (requirements.lock) agrees with pyproject.toml, environment.yml and the
Makefile, and ``mmcl reproduce`` names installed versions that differ from it."""
from __future__ import annotations

import re
from importlib import metadata

import pytest
import yaml

from mmcl import environment

ROOT = environment.ROOT


def test_the_lock_satisfies_every_requirement_of_pyproject():
    assert environment.unsatisfied_requirements() == []


def test_the_lock_holds_the_constraints_and_pins_everything_it_installs():
    pins = environment.read_lock()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for line in (ROOT / "requirements.constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[environment.normalise(name)] == version.strip()
    # The transitive dependencies are pinned too (open_clip needs timm, papermill nbclient).
    assert {"timm", "nbclient", "cloudpickle", "widgetsnbextension"} <= set(pins)


def test_environment_yml_and_make_install_the_lock_for_its_python():
    header = (ROOT / "requirements.lock").read_text()
    python = re.search(r"--python-version (\d+\.\d+)", header).group(1)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python={python}" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r $(LOCK)" in makefile and "LOCK   := requirements.lock" in makefile
    assert "uv pip compile pyproject.toml --extra test" in makefile


def test_a_lock_out_of_range_or_incomplete_is_named(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1.24", "pyyaml>=6.0"]\n'
                         '[project.optional-dependencies]\ntest = ["pytest>=7.4"]\n')
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==1.21.0\n    # via x\nPyYAML==6.0.2\n")
    assert environment.unsatisfied_requirements(lock, pyproject) == [
        "numpy>=1.24: requirements.lock pins 1.21.0", "pytest>=7.4: not in requirements.lock"]
    lock.write_text("numpy>=1.24\n")
    with pytest.raises(ValueError, match=r"requirements.lock:1: not an exact pin"):
        environment.read_lock(lock)


def test_installed_versions_that_differ_from_the_lock_are_warned_about(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    installed = metadata.version("pyyaml")
    lock.write_text(f"PyYAML=={installed}\npandas==0.0.1\nno-such-distribution==1.0\n")
    assert environment.warn_lock_differences(lock) == [
        ("no-such-distribution", "1.0", None), ("pandas", "0.0.1", metadata.version("pandas"))]
    out = capsys.readouterr().out
    assert out.startswith("mmcl: warning: 2 installed versions differ from requirements.lock: "
                          f"no-such-distribution missing (lock 1.0), pandas {metadata.version('pandas')} (lock 0.0.1)")
    assert environment.warn_lock_differences(tmp_path / "absent.lock") == []
