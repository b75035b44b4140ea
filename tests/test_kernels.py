"""Pinned CPU kernels (mmcl.kernels): the same seed gives the same bytes under another CPU's kernels.

Two kernel environments on one machine stand in for two CPUs: the machine's own dispatch, and the
one of a CPU without AVX2 (SSE4.2: ATen's scalar path, oneDNN SSE4.1, MKL and OpenBLAS at SSE4.2,
numpy without AVX2) with another thread count. Pinned, both pre-train the same backbone, generate
the same benchmark and give identical accuracy matrices; with the pinning switched off (the
negative control) they pre-train different backbones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmcl import kernels
from mmcl.config import ConfigError, load_config

pytestmark = pytest.mark.skipif(not kernels.is_x86() or kernels.native_level() not in ("AVX512", "AVX2"),
                                reason="pinning is to AVX2 on x86-64")

# What another CPU's kernel dispatch looks like (no AVX2), and another thread count.
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "SSE4_2",
             "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Nehalem",
             "NPY_DISABLE_CPU_FEATURES": "X86_V3 " + kernels.pinned_environment()["NPY_DISABLE_CPU_FEATURES"],
             "OMP_NUM_THREADS": "3"}

RUNS = """
import json, sys
from mmcl import engine, records
from mmcl.config import load_config
config = load_config("smoke", [f"runtime.output_dir={sys.argv[1]}", "runtime.progress=false", *sys.argv[3:]])
out = {}
for method in sys.argv[2].split(","):
    result = engine.run(config, "class_incremental", method, seed=0)
    manifest = records.read_json(result.run_dir / "manifest.json")
    out[method] = {"backbone": manifest["backbone"]["sha256"], "data": manifest["data"]["sha256"],
                   "matrix": result.metrics["accuracy_matrix"], "kernels": manifest["kernels"]}
print(json.dumps(out))
"""


def _native_environment() -> dict[str, str]:
    environment = dict(os.environ)
    for name in [*kernels.pinned_environment(), kernels.SWITCH]:
        environment.pop(name, None)
    return environment | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the test workers' (conftest.py)


def smoke_runs(tmp_path, name: str, methods: list[str], environment: dict, overrides: tuple[str, ...] = ()) -> dict:
    """Smoke runs (seed 0) of ``methods`` in a new process with ``environment`` and an empty cache."""
    environment = {**environment, "MMCL_CACHE": str(tmp_path / f"cache-{name}")}
    done = subprocess.run([sys.executable, "-c", RUNS, str(tmp_path / f"runs-{name}"), ",".join(methods), *overrides],
                          env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_another_cpus_kernels_give_the_same_bytes(tmp_path):
    methods = ["finetune", "comm", "moe-adapters"]  # fine-tuning, a prompt method, an adapter method
    native = smoke_runs(tmp_path, "native", methods, _native_environment())
    other = smoke_runs(tmp_path, "other", methods, _native_environment() | OTHER_CPU)
    for method in methods:
        assert native[method]["kernels"]["portable"] and other[method]["kernels"]["portable"], method
        for key in ("backbone", "data", "matrix"):
            assert other[method][key] == native[method][key], (method, key)
    # The negative control: without the pinning, the two environments pre-train different backbones.
    unpinned = _native_environment() | {kernels.SWITCH: "0"}
    control = [smoke_runs(tmp_path, f"unpinned-{name}", ["finetune"], environment, ("train.epochs=0",))["finetune"]
               for name, environment in (("native", unpinned), ("other", unpinned | OTHER_CPU))]
    assert not control[0]["kernels"]["portable"] and control[1]["kernels"]["kernels"]["aten"] == "DEFAULT"
    assert control[0]["backbone"] != control[1]["backbone"]


def _python(code: str, environment: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)


def test_importing_mmcl_pins_whatever_the_environment_says():
    shown = _python("import mmcl, json; from mmcl import kernels; print(json.dumps(kernels.state()))",
                    _native_environment() | OTHER_CPU)
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["portable"], state["why_not"]
    assert state["kernels"]["aten"] == "AVX2" and state["kernels"]["onednn"] == "off"
    assert state["kernels"]["numpy_dispatch_above_avx2"] == [] and set(state["kernels"]["openblas"]) == {"Haswell"}


def test_numpy_loaded_before_mmcl_is_refused_in_one_line():
    # OpenBLAS picks its kernels when numpy loads it: Nehalem's here, before mmcl could pin Haswell's.
    code = ("import numpy, mmcl; from mmcl import kernels\n"
            "try:\n    kernels.require(True)\nexcept Exception as error:\n    print(type(error).__name__, error)")
    shown = _python(code, _native_environment() | {"OPENBLAS_CORETYPE": "Nehalem"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("ConfigError the CPU kernels could not be pinned to AVX2 (")
    assert "OpenBLAS runs Nehalem kernels (loaded before mmcl)" in shown.stdout
    assert "import mmcl before numpy" in shown.stdout and len(shown.stdout.strip().splitlines()) == 1


def test_opting_out_is_recorded_and_kept_apart(tmp_path):
    from mmcl import runs

    native = load_config("smoke", ["runtime.portable_kernels=false", f"data.cache_dir={tmp_path}"])
    portable = load_config("smoke", [f"data.cache_dir={tmp_path}"])
    assert portable.runtime.portable_kernels and portable.cache_dir() == tmp_path
    assert native.cache_dir() == tmp_path / kernels.machine_tag()  # its backbones and benchmarks apart
    identity = runs.run_identity(native, "finetune", "av-events", scenario="class_incremental")
    assert identity["kernels"] == kernels.machine_tag()
    assert "kernels" not in runs.run_identity(portable, "finetune", "av-events", scenario="class_incremental")
    # This process pinned its kernels when it imported mmcl: a native run cannot be computed in it.
    with pytest.raises(ConfigError, match="MMCL_PORTABLE_KERNELS=0"):
        kernels.require(False)
    shown = _python("import mmcl; from mmcl.config import load_config; from mmcl import kernels\n"
                    "print(load_config('smoke').runtime.portable_kernels, kernels.state()['why_not'])",
                    _native_environment() | {kernels.SWITCH: "0"})
    assert shown.stdout.strip() == "False ['MMCL_PORTABLE_KERNELS=0 (runtime.portable_kernels: false)']", shown.stderr


def test_the_command_line_restarts_itself_with_the_kernels_asked(tmp_path):
    # --set runtime.portable_kernels=false: the process was pinned at import, so mmcl starts again native.
    environment = _native_environment() | {"MMCL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "mmcl.cli", "run", "--profile", "smoke", "--scenario",
                           "class_incremental", "--method", "zero-shot", "--output-dir", str(tmp_path / "runs"),
                           "--set", "runtime.portable_kernels=false", "--set", "runtime.progress=false"],
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifests = list((tmp_path / "runs").rglob("manifest.json"))
    assert len(manifests) == 1 and "@" in manifests[0].parent.parent.name  # its own folder
    state = json.loads(manifests[0].read_text())["kernels"]
    assert not state["portable"] and not state["requested"]
    assert (tmp_path / "cache" / kernels.machine_tag() / "backbones").is_dir()


PRODUCT = """
import hashlib, sys
import mmcl, torch
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
left, right = torch.randn(256, 384, generator=generator), torch.randn(384, 200, generator=generator)
print(hashlib.sha256((left @ right).numpy().tobytes()).hexdigest())
"""


def test_mkl_computes_on_the_pinned_branch_on_every_vendors_cpu():
    assert kernels.mkl_branch_honoured("GenuineIntel") and not kernels.mkl_branch_honoured("AuthenticAMD")
    # Measured on this CPU: does the branch MKL_CBWR names change MKL's products? The AVX2 and SSE4.2
    # branches sum and round differently (fused multiply-adds). Left to itself (no mmcl: the negative
    # control), MKL honours them on Intel CPUs only and runs its own dispatch elsewhere; with mmcl
    # imported first it honours them on every CPU (mmcl answers MKL's vendor question).
    alone, with_mmcl = [], []
    for branch in ("AVX2,STRICT", "SSE4_2,STRICT"):
        code = PRODUCT.replace("import mmcl, torch", f"import os; os.environ['MKL_CBWR'] = {branch!r}; import torch")
        shown = _python(code, _native_environment())
        assert shown.returncode == 0, shown.stderr
        alone.append(shown.stdout.strip())
        # pin() sets MKL_CBWR when mmcl is imported; MKL reads it at its first product, after this.
        code = PRODUCT.replace("import mmcl, torch", f"import mmcl, os; os.environ['MKL_CBWR'] = {branch!r}; import torch")
        shown = _python(code, _native_environment())
        assert shown.returncode == 0, shown.stderr
        with_mmcl.append(shown.stdout.strip())
    assert (alone[0] != alone[1]) == kernels.mkl_branch_honoured(), (kernels.cpu_vendor(), alone)
    assert with_mmcl[0] != with_mmcl[1], (kernels.cpu_vendor(), with_mmcl)
    assert with_mmcl[0] == alone[0] or not kernels.mkl_branch_honoured()  # on Intel: MKL's own AVX2 branch
    state = json.loads(_python("import mmcl, json; from mmcl import kernels; print(json.dumps(kernels.state()))",
                               _native_environment()).stdout)
    assert state["kernels"]["mkl_branch"] == "AVX2,STRICT" and state["portable"], state
    assert state["cpu"]["vendor"] == kernels.cpu_vendor()
    assert state["kernels"]["mkl_vendor"].startswith("Intel"), state["kernels"]


def test_a_process_whose_mkl_computed_before_mmcl_was_imported_is_refused():
    # MKL fixes its branch at its first product: here before mmcl set MKL_CBWR (and, on another vendor's
    # CPU, before it answered MKL's vendor question), so the products are this machine's own.
    code = ("import json, torch; torch.ones(4, 4) @ torch.ones(4, 4)\n"
            "import mmcl; from mmcl import kernels\n"
            "try:\n    kernels.require(True)\n    refused = ''\nexcept mmcl.errors.ConfigError as error:\n"
            "    refused = str(error)\n"
            "print(json.dumps([kernels.state(), refused]))")
    shown = _python(code, _native_environment())
    assert shown.returncode == 0, shown.stderr
    state, refused = json.loads(shown.stdout)
    assert not state["portable"] and state["kernels"]["mkl_branch"] != "AVX2,STRICT", state
    assert any(reason.startswith("MKL computes on its") for reason in state["why_not"]), state["why_not"]
    assert "MKL computes on its" in refused and "import mmcl before numpy and torch" in refused, refused