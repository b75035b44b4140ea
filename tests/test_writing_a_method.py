"""docs/writing_a_method.md: its worked example, exactly as printed, registers, runs on the smoke
profile through the engine and learns (and, untrained, is the zero-shot model)."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from mmcl import engine
from mmcl.config import load_config
from mmcl.methods import REGISTRY, method_class

PAGE = Path(__file__).resolve().parents[1] / "docs" / "writing_a_method.md"
MARKER = "<!-- example: mmcl/methods/label_smoothing.py -->"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def example() -> str:
    after = PAGE.read_text(encoding="utf-8").split(MARKER, 1)[1]
    return python_blocks(after)[0]


@pytest.fixture
def label_smoothing(tmp_path, monkeypatch):
    """The example as a module of its own, registered for the test only."""
    path = tmp_path / "label_smoothing.py"
    path.write_text(example(), encoding="utf-8")
    before = dict(REGISTRY)
    spec = importlib.util.spec_from_file_location("label_smoothing", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "label_smoothing", module)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


def test_the_example_is_one_short_file_and_the_finetune_sketch_is_the_real_one():
    code = example()
    assert len(code.splitlines()) < 60
    finetune = python_blocks(PAGE.read_text(encoding="utf-8"))[0]
    assert finetune in (Path(__file__).resolve().parents[1] / "mmcl" / "methods" / "finetune.py").read_text()


def test_the_example_registers_learns_and_untrained_is_zero_shot(label_smoothing, tmp_path):
    cls = method_class("label-smoothing")
    assert cls is label_smoothing.LabelSmoothing and cls.family == "classic"
    assert cls.make_config({"smoothing": 0.3}).smoothing == 0.3

    def final(*overrides):
        config = load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}", *overrides])
        modes = engine.run(config, "domain_incremental", "label-smoothing", seed=0).metrics["modes"]
        return modes["standard"]["final_accuracy"], modes["standard"]["zero_shot_accuracy"]

    trained, zero_shot = final()
    assert trained > zero_shot + 10, (trained, zero_shot)
    untrained, zero_shot_again = final("train.epochs=0")  # the negative control: no step, no learning
    assert untrained <= zero_shot_again + 1e-9 and zero_shot_again == zero_shot, (untrained, zero_shot)


def test_the_registry_is_left_as_it_was():
    assert "label-smoothing" not in REGISTRY
