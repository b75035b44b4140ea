"""One-line errors (or a graceful handling) where a newcomer stumbled, each triggered for real:
files damaged on disk, the command line, no network.

- a run record cut short by something other than mmcl (``metrics.json``, ``manifest.json``): named in
  one warning line, the run counts as incomplete and ``mmcl run`` redoes it; tables and ``mmcl verify``
  go on without it;
- damaged pre-trained backbone weights in the cache: pre-trained again, with one warning line;
- the ``paper`` profile without its data or without network: one line within seconds;
- ``mmcl verify`` on a folder without runs, or on the profile's folder itself;
- notebook parameters given as strings (papermill's ``-p seeds "[0]"``);
- open_clip's "No pretrained weights loaded" warning, untrue of the backbone mmcl pre-trains itself.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmcl import records, reproduce, results, verify
from mmcl.cli import main
from mmcl.config import ConfigError, list_parameter, load_config
from mmcl.engine import run

SMALL_PRETRAIN = ["model.pretrain.steps=12", "model.pretrain.samples_per_concept=2", "model.pretrain.batch_size=48"]
RANDOM_INIT = "No pretrained weights loaded for model"


# ------------------------------------------------------------------------------ damaged run records
@pytest.fixture(scope="module")
def made_runs(tmp_path_factory, mmcl_cache):
    """Two complete smoke runs (zero-shot, finetune) under <root>/smoke."""
    root = tmp_path_factory.mktemp("made")
    config = load_config("smoke", [f"runtime.output_dir={root}"])
    for method in ("zero-shot", "finetune"):
        run(config, "class_incremental", method, seed=0)
    return root


@pytest.fixture
def runs(made_runs, tmp_path):
    """A copy of the made runs, free to damage."""
    shutil.copytree(made_runs, tmp_path / "runs")
    return tmp_path / "runs"


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # in place, as a process killed while copying it leaves it


def _warnings_naming(caplog, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


def test_a_truncated_metrics_file_is_an_incomplete_run_named_in_one_line_and_run_again(runs, tmp_path, caplog,
                                                                                        capsys):
    run_dir = runs / "smoke/class_incremental/av-events/finetune/seed0"
    metrics_path = run_dir / "metrics.json"
    before = json.loads(metrics_path.read_text())
    expected = tmp_path / "expected.yaml"
    assert main(["verify", "--profile", "smoke", "--runs", str(runs), "--expected", str(expected),
                 "--write-expected"]) == 0
    _cut_in_half(metrics_path)
    caplog.set_level(logging.WARNING)

    assert not records.is_complete(run_dir)
    named = _warnings_naming(caplog, metrics_path)
    assert len(named) == 1 and "\n" not in named[0] and "is damaged" in named[0] and "incomplete" in named[0]

    # tables and notebooks go on without it
    frame = results.load_runs(runs / "smoke")
    assert set(frame["method"]) == {"zero-shot"}

    # mmcl verify: the run's numbers are missing (exit 1), no traceback
    capsys.readouterr()
    assert main(["verify", "--profile", "smoke", "--runs", str(runs), "--expected", str(expected)]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "finetune" in out

    # mmcl run runs it again: resumed from its checkpoints, to the same numbers
    capsys.readouterr()
    assert main(["run", "--profile", "smoke", "--scenario", "class_incremental", "--method", "finetune",
                 "--seed", "0", "--output-dir", str(runs)]) == 0
    assert capsys.readouterr().out.startswith(f"finished: {run_dir}")
    after = json.loads(metrics_path.read_text())
    assert after["accuracy_matrix"] == before["accuracy_matrix"] and after["modes"] == before["modes"]
    assert records.is_complete(run_dir)


def test_a_damaged_manifest_and_zero_shot_record_are_written_again(runs, caplog):
    run_dir = runs / "smoke/class_incremental/av-events/finetune/seed0"
    before = json.loads((run_dir / "metrics.json").read_text())
    _cut_in_half(run_dir / "manifest.json")
    (run_dir / "zero_shot.json").write_text("")  # emptied in place
    (run_dir / "metrics.json").write_bytes(b"\x00" * 64)  # overwritten with zeros (a disk fault)
    caplog.set_level(logging.WARNING)
    config = load_config("smoke", [f"runtime.output_dir={runs}"])
    result = run(config, "class_incremental", "finetune", seed=0)
    assert not result.skipped and result.metrics["modes"] == before["modes"]
    for name in ("manifest.json", "zero_shot.json", "metrics.json"):
        assert len(_warnings_naming(caplog, run_dir / name)) == 1, name
        assert isinstance(json.loads((run_dir / name).read_text()), dict)  # written again
    assert run(config, "class_incremental", "finetune", seed=0).skipped


# ------------------------------------------------------------------------------ mmcl verify
def test_verify_on_a_folder_without_runs_says_so_in_one_line_and_fails(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify.expected_file("tiny").is_file()  # ~290 expected numbers, each "missing" before
    done = subprocess.run([sys.executable, "-m", "mmcl.cli", "verify", "--profile", "tiny", "--runs", str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"mmcl: error: no complete runs of the tiny profile under {empty / 'tiny'}: "
                                        f"nothing to verify (run `mmcl reproduce --profile tiny` first, or give "
                                        f"--runs the folder that holds tiny/<scenario>/...)"]


def test_verify_accepts_the_profile_folder_itself_and_names_another_profiles(runs, tmp_path, capsys):
    expected = tmp_path / "expected.yaml"
    assert main(["verify", "--profile", "smoke", "--runs", str(runs), "--expected", str(expected),
                 "--write-expected"]) == 0
    capsys.readouterr()
    # --runs runs/smoke: the profile's folder, not runs/smoke/smoke
    assert main(["verify", "--profile", "smoke", "--runs", str(runs / "smoke"), "--expected", str(expected)]) == 0
    assert f"mmcl verify (smoke, {runs / 'smoke'} against {expected}): 4 of 4" in capsys.readouterr().out
    # another profile's folder: one line saying what was meant
    assert main(["verify", "--profile", "tiny", "--runs", str(runs / "smoke")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"give --runs {runs} --profile smoke" in error


# ------------------------------------------------------------------------------ the backbone cache
def test_damaged_backbone_weights_are_pre_trained_again_with_one_warning(tmp_path, monkeypatch, caplog):
    from mmcl.models.factory import build_encoder
    from mmcl.models.pretraining import tiny_cache_path

    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))  # not the session's shared cache
    config = load_config("smoke", SMALL_PRETRAIN)
    digest = build_encoder(config).weights["sha256"]
    path = tiny_cache_path(config)
    good = path.read_bytes()
    caplog.set_level(logging.WARNING)
    for damage in ("garbage", "truncated", "refused"):
        caplog.clear()
        if damage == "garbage":
            path.write_bytes(b"these are not weights\n" * 20)
        elif damage == "truncated":
            path.write_bytes(good[: len(good) // 2])
        else:  # a pickle of other objects than tensors: not loaded (no code runs from it)
            torch.save({"state_dict": {"weight": __import__("collections").Counter()}}, path)
        encoder = build_encoder(config)
        assert encoder.weights["sha256"] == digest, damage  # pre-trained again: the same weights
        named = _warnings_naming(caplog, path)
        assert len(named) == 1 and "\n" not in named[0] and "pre-training" in named[0], (damage, named)


def test_pre_training_logs_no_untrue_random_initialisation_warning(tmp_path, monkeypatch, caplog):
    import open_clip

    from mmcl.models.factory import build_encoder

    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))  # pre-trains here, whatever the session cached
    caplog.set_level(logging.WARNING)
    filters = list(logging.getLogger().filters)
    build_encoder(load_config("smoke", SMALL_PRETRAIN))
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    assert logging.getLogger().filters == filters
    # only that call: a model open_clip really leaves random is still said to be
    open_clip.create_model("mmcl-micro", pretrained=None, force_image_size=32)
    assert [r for r in caplog.records if RANDOM_INIT in r.getMessage()]


# ------------------------------------------------------------------------------ the paper profile offline
@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """The Hugging Face hub out of reach (a closed local port) and an empty hub cache, in this process
    and in the processes it starts: nothing is ever downloaded, with or without a network."""
    from huggingface_hub import constants

    for variable in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                     "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)  # the paper profile's data/processed/... (absent) is relative


def test_paper_profile_without_data_says_where_it_goes_first_in_one_line(no_hub, tmp_path):
    command = [sys.executable, "-m", "mmcl.cli", "run", "--profile", "paper", "--scenario", "class_incremental",
               "--method", "finetune", "--set", "runtime.device=cpu"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"MMCL_CACHE": str(tmp_path)})
    seconds = time.perf_counter() - started
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("mmcl: error: benchmark 'av-events': data/processed/ave/meta.json not found. "
                                  "Prepare the dataset first")
    assert seconds < 30, seconds  # the interpreter's imports; the hub was retried ~50 s before the data was named
    # The same through the API, timed without the imports.
    config = load_config("paper", ["runtime.device=cpu", f"runtime.output_dir={tmp_path / 'runs'}"])
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="meta.json not found. Prepare the dataset first"):
        run(config, "class_incremental", "finetune", seed=0)
    assert time.perf_counter() - started < 5


def test_paper_profile_without_network_and_weights_fails_in_seconds_in_one_line(no_hub, tmp_path):
    meta = tmp_path / "data/processed/ave/meta.json"  # the data is there: the backbone is what is missing
    meta.parent.mkdir(parents=True)
    meta.write_text('{"complete": true}')
    config = load_config("paper", ["runtime.device=cpu", f"runtime.output_dir={tmp_path / 'runs'}"])
    started = time.perf_counter()
    with pytest.raises(ConfigError) as raised:
        run(config, "class_incremental", "finetune", seed=0)
    seconds = time.perf_counter() - started
    message = str(raised.value)
    assert seconds < 5, seconds
    assert "\n" not in message and message.startswith("model.pretrained: open_clip's 'openai' weights of ViT-B-16 "
                                                      "are not in the Hugging Face cache")
    assert "the hub is out of reach (127.0.0.1:9: " in message


# ------------------------------------------------------------------------------ notebook parameters
def test_list_parameters_accept_lists_and_strings_that_parse_to_one():
    assert list_parameter("[0]", "seeds", int) == list_parameter("0", "seeds", int) == list_parameter(0, "seeds", int) \
        == [0]
    assert list_parameter("0 1 2", "seeds", int) == list_parameter("0,1, 2", "seeds", int) \
        == list_parameter("[0, 1, 2]", "seeds", int) == list_parameter((0, "1", 2), "seeds", int) == [0, 1, 2]
    assert list_parameter('["lwf", "replay"]', "methods") == list_parameter("lwf replay", "methods") \
        == ["lwf", "replay"]
    assert list_parameter(None, "methods") is None
    for bad in ("zero", "[0", "", True, 1.5, "{a: 1}"):
        with pytest.raises(ConfigError) as raised:
            list_parameter(bad, "seeds", int)
        assert str(raised.value).startswith("parameter seeds: ") and "\n" not in str(raised.value)
    assert load_config("smoke", "train.epochs=2 train.lr=0.01").train.epochs == 2
    assert load_config("smoke", '["train.epochs=2"]').train.epochs == 2


def test_sweeps_take_papermill_string_parameters(tmp_path):
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.executor.name=local", "train.epochs=1"])
    listed = reproduce.sweep_jobs(config, "class_incremental", ["zero-shot"], [0, 1], ["av-events"])
    assert reproduce.sweep_jobs(config, "class_incremental", "zero-shot", "[0, 1]", "av-events") == listed
    assert reproduce.sweep_jobs(config, "class_incremental", "[zero-shot]", "0 1", "[av-events]") == listed
    assert reproduce.ablation_jobs(config, "comm", "[0]", "modality_incremental") \
        == reproduce.ablation_jobs(config, ["comm"], [0], ["modality_incremental"])
    with pytest.raises(ConfigError, match=r"^parameter seeds: 'first' in 'first' is not an integer"):
        reproduce.sweep_jobs(config, "class_incremental", "zero-shot", "first")
    # for real, as the class-incremental notebook calls it after papermill's -p seeds "[0]"
    frame = reproduce.run_sweep(config, "class_incremental", methods="zero-shot", seeds="[0]", benchmarks="av-events")
    assert list(frame["seed"]) == [0] and list(frame["method"]) == ["zero-shot"]


def test_every_papermill_command_in_the_notebooks_and_readme_gives_values_the_notebook_accepts():
    """Each ``-p NAME VALUE`` / ``-y YAML`` example, resolved as papermill resolves it, is a value that
    its notebook's library calls accept."""
    import yaml
    from papermill.cli import _resolve_type

    root = Path(__file__).resolve().parent.parent
    texts = [(p.name, "".join(json.loads(p.read_text())["cells"][0]["source"]))
             for p in sorted((root / "notebooks").glob("*.ipynb"))]
    texts.append(("README.md", (root / "README.md").read_text()))
    checked = 0
    for source, text in texts:
        values = [(name, _resolve_type(value)) for name, value in re.findall(r"-p (\w+) \"([^\"]*)\"", text)]
        values += [(name, _resolve_type(value)) for name, value in re.findall(r"-p (\w+) ([^\s\"`'\\]+)", text)]
        for document in re.findall(r"-y '([^']*)'", text):
            values += list(yaml.safe_load(document).items())
        for name, value in values:
            checked += 1
            if name == "seeds":
                assert list_parameter(value, name, int), (source, value)
            elif name in ("methods", "benchmarks", "scenarios"):
                assert list_parameter(value, name), (source, value)
            elif name == "overrides":
                load_config("smoke", value)
            elif name == "scenario":  # the scenario notebook's first library call checks it
                assert reproduce.scenario_notebook_benchmarks(load_config("smoke"), value), (source, value)
            else:
                assert name in ("profile", "figures_dir") and isinstance(value, str), (source, name, value)
    assert checked >= 10


def test_openai_weights_are_built_with_the_quick_gelu_they_were_trained_with(monkeypatch):
    # open_clip's ViT-B-16 config has exact GELU; OpenAI's weights were trained with QuickGELU, and
    # open_clip only warns about the mismatch: the paper profile must build the model with QuickGELU.
    import contextlib

    import open_clip

    from mmcl.models import factory

    assert factory.tag_uses_quick_gelu("ViT-B-16", "openai")
    assert not factory.tag_uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    assert not factory.tag_uses_quick_gelu("ViT-B-16", "/weights/open_clip_model.safetensors")
    assert not factory.tag_uses_quick_gelu("mmcl-tiny", "self") and not factory.tag_uses_quick_gelu("ViT-B-16", None)
    seen = {}

    class Built(Exception):
        pass

    def create_model(name, **kwargs):
        seen.update(kwargs, name=name)
        raise Built

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(factory, "hub_weights_source", lambda *a: contextlib.nullcontext())
    with pytest.raises(Built):
        factory.build_encoder(load_config("paper"), "cpu")
    assert seen["name"] == "ViT-B-16" and seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True
