"""Portable CPU kernels: the same seed gives the same bytes on every x86-64 machine.

The libraries that compute mmcl's numbers pick their CPU kernels at run time by what the processor
offers: on an AVX-512 machine a softmax, a convolution, a matrix product or numpy's ``exp`` run
other instructions than on an AVX2 one, sum in another order and round the last bits differently.
Over hundreds of training steps those bits grow into another pre-trained backbone and accuracies
points apart. So every process that imports mmcl pins the kernels to one instruction set that every
x86-64 machine of the last decade has (:data:`LEVEL`, AVX2), through the switches each library reads:

- torch's own kernels (ATen, SLEEF): ``ATEN_CPU_CAPABILITY``, read at the first dispatched operation;
- oneDNN (convolutions, linear layers): ``ONEDNN_MAX_CPU_ISA``, read at its first primitive; and
  switched off on the CPU (below);
- MKL (matrix products): ``MKL_CBWR`` in strict conditional-numerical-reproducibility mode, and
  ``MKL_ENABLE_INSTRUCTIONS``, read at its first call. MKL honours its AVX2 branch on Intel CPUs
  only: on another vendor's it runs its own dispatch instead (Intel's oneMKL developer guide,
  "Getting Started with Conditional Numerical Reproducibility"), and an AMD CPU computed other
  products than an Intel one and pre-trained another backbone. So on a CPU of another vendor with
  AVX2, mmcl answers MKL's vendor question before MKL asks it (:func:`_answer_mkl_vendor`), and MKL
  computes on the pinned branch there too; :func:`mkl_branch` reads the branch MKL computes on;
- numpy's SIMD dispatch: ``NPY_DISABLE_CPU_FEATURES``, read when numpy is imported;
- OpenBLAS (numpy's and scipy's): ``OPENBLAS_CORETYPE``, read when the library is loaded;
- numba (librosa's): ``NUMBA_CPU_NAME``, read when it compiles.

:func:`pin` sets them in ``os.environ`` when :mod:`mmcl` is imported (``mmcl/__init__.py``), before
it imports anything else, overriding what the caller's environment says, so that every process a
run starts (pool workers, submitit jobs, notebook kernels, test workers) inherits them. torch reads
its own switches lazily, but it imports numpy, and numpy and OpenBLAS read theirs when they load: a
process that imported numpy or torch before mmcl keeps numpy's native kernels. :func:`state` reads what each library really uses, and :func:`require` refuses to
compute numbers in a process whose kernels are not what the run's ``runtime.portable_kernels`` asks.

What else could move bytes, and why it does not:

- **Threads.** A reduction split over more threads sums in another order. Every CPU run, the
  pre-training and the benchmark generation run on one intra-op and one BLAS thread
  (:func:`mmcl.runtime.run_threads`), whatever ``OMP_NUM_THREADS`` says; ``runtime.num_threads``
  overrides it and is recorded in the manifest.
- **Cache sizes.** oneDNN chooses its blocking (and with it the order of a convolution's or a
  product's sums) by the caches it finds, which differ between processors of one instruction set.
  Pinned, oneDNN is switched off on the CPU (``torch.backends.mkldnn``): convolutions and linear
  layers go through ATen and MKL, whose conditional-numerical-reproducibility mode promises the
  same results on every processor of the pinned level.
- **Memory alignment.** MKL's plain CNR mode (``MKL_CBWR=AVX2``) still sums a product in an order
  that depends on where its operands start in memory: a batch-first and a sequence-first layout of
  the same attention then differed in the last bits (``tests/test_tower_forward.py``), and a tensor
  that shares a numpy array's memory is only 16-byte aligned, at an address that can differ from run
  to run. Its strict mode (``AVX2,STRICT``) makes the products independent of alignment and of
  MKL's thread count.

``runtime.portable_kernels: false`` (a process started with ``MMCL_PORTABLE_KERNELS=0``) lets each
library use the best kernels of this CPU: faster on AVX-512 machines (docs/performance.md), with
numbers bound to the machine. The run's manifest says so, its identity names the CPU's kernel level
(it lives in its own ``<method>@<digest>`` folder) and its caches (backbone, benchmark, prefix
tables) go under ``<cache>/native-<level>/``, apart from the portable ones.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys

from mmcl.errors import ConfigError

SWITCH = "MMCL_PORTABLE_KERNELS"  # "0": leave the kernels native (set by the runtime.portable_kernels plumbing)
LEVEL = "AVX2"
_OFF = ("0", "false", "no", "off")
# numpy's dispatch targets above AVX2 (numpy >= 2.4), with the CPU flags (/proc/cpuinfo) each needs.
# Only targets this CPU supports are disabled: numpy warns about any other name.
_NUMPY_ABOVE_AVX2 = {
    "X86_V4": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
    "AVX512_ICL": ("avx512f", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq", "avx512ifma",
                   "avx512_vnni"),
    "AVX512_SPR": ("avx512f", "avx512_fp16"),
}


def requested() -> bool:
    """Whether this process pins its kernels: always, unless ``$MMCL_PORTABLE_KERNELS`` is ``0``."""
    return os.environ.get(SWITCH, "1").strip().lower() not in _OFF


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _first_processor() -> dict[str, str]:
    """The fields of the first processor's block of Linux ``/proc/cpuinfo`` (empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block ends
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    return set(_first_processor().get("flags", "").split())


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``; Linux ``/proc/cpuinfo``), else ``unknown``."""
    return _first_processor().get("vendor_id") or "unknown"


def mkl_branch_honoured(vendor: str | None = None) -> bool:
    """Whether MKL, left to itself, computes on the branch ``MKL_CBWR`` names: on Intel CPUs only.
    Elsewhere it runs its own dispatch for this CPU, unless told the vendor (:func:`_answer_mkl_vendor`)."""
    return (cpu_vendor() if vendor is None else vendor) == "GenuineIntel"


# MKL's reproducibility settings as mkl_cbwr_get(MKL_CBWR_ALL) returns them (oneMKL's mkl_cbwr.h):
# a branch, plus MKL_CBWR_STRICT.
_MKL_ALL, _MKL_STRICT = -1, 0x10000
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2",
                 12: "AVX512", 14: "AVX512_E1"}
# MKL asks whether the CPU is Intel's once, through this function, and keeps the answer in a static
# int that starts at -1 (not asked). Its machine code in torch 2.14.1's libtorch_cpu.so, which links
# MKL in, begins ``mov <memo>(%rip), %eax; test %eax, %eax; js <ask>; ret``: the memo's address is
# the first instruction's end plus its 32-bit displacement.
_MKL_VENDOR_PROBE = "mkl_serv_intel_cpu_true"
_PROBE_HEAD, _PROBE_TAIL = b"\x8b\x05", b"\x85\xc0\x78\x01\xc3"
_MKL_VENDOR: dict[str, str] = {}  # how the vendor question was answered: {"answer": ..., "why": ...}


def _mkl_library():
    """torch's library holding MKL, already loaded (``ctypes.CDLL``), or None off x86-64 Linux builds."""
    import ctypes

    import torch  # here, not above: mmcl imports this module before numpy and torch (pin)

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(path):
        return None
    library = ctypes.CDLL(path)
    return library if hasattr(library, "mkl_serv_cbwr_get") else None


def _answer_mkl_vendor() -> None:
    """On a CPU with AVX2 not made by Intel, set MKL's memoized answer to "is this an Intel CPU?" to
    yes before MKL asks, so that it computes on the branch ``MKL_CBWR`` pins instead of its own
    dispatch: the same products as on an Intel CPU (docs/performance.md, "Pinned kernels"). Called
    once torch is loaded (:class:`_AfterTorch`). Recorded in :data:`_MKL_VENDOR`; never raises: where
    the answer cannot be given, :func:`state` reports the branch MKL really uses."""
    import ctypes

    if _MKL_VENDOR or not requested() or not is_x86() or mkl_branch_honoured():
        return
    if native_level() not in ("AVX512", "AVX2"):
        _MKL_VENDOR.update(answer="left to MKL", why=f"this CPU has no {LEVEL}")
        return
    library = _mkl_library()
    probe = getattr(library, _MKL_VENDOR_PROBE, None) if library is not None else None
    if probe is None:
        _MKL_VENDOR.update(answer="left to MKL", why="this torch build has no MKL vendor probe")
        return
    start = ctypes.cast(probe, ctypes.c_void_p).value
    code = ctypes.string_at(start, 11)
    if code[:2] != _PROBE_HEAD or code[6:] != _PROBE_TAIL:
        _MKL_VENDOR.update(answer="left to MKL", why="MKL's vendor probe is not the one of torch 2.14.1")
        return
    memo = ctypes.c_int.from_address(start + 6 + int.from_bytes(code[2:6], "little", signed=True))
    if memo.value != 0:  # -1: MKL has not asked yet (1: answered so already)
        memo.value = 1
        _MKL_VENDOR.update(answer="Intel", why="told by mmcl before MKL's first call")
    else:
        _MKL_VENDOR.update(answer="left to MKL", why="MKL computed before mmcl was imported")


def mkl_branch() -> str:
    """The branch MKL computes its products on in this process, as MKL reports it (``AVX2,STRICT``
    when pinned; ``AUTO`` is its own dispatch), or ``unknown`` where torch's MKL cannot be read.
    Imports torch; fixes MKL's branch for the rest of the process (MKL decides at its first call)."""
    import ctypes

    library = _mkl_library()
    if library is None:
        return "unknown"
    _answer_mkl_vendor()
    get = library.mkl_serv_cbwr_get
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    settings = get(_MKL_ALL)
    if settings < 0:
        return "unknown"
    branch = _MKL_BRANCHES.get(settings & ~_MKL_STRICT, f"branch {settings & ~_MKL_STRICT}")
    return branch + (",STRICT" if settings & _MKL_STRICT else "")


class _AfterTorch:
    """An import hook (``sys.meta_path``) that calls :func:`_answer_mkl_vendor` as soon as torch has
    been imported, before anything can call MKL, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module"):
            execute = loader.exec_module

            def exec_module(module):
                try:
                    execute(module)
                finally:
                    del loader.exec_module  # the loader's own method again
                _answer_mkl_vendor()

            loader.exec_module = exec_module
        return spec


def cpu_model() -> str:
    """The CPU's model name with its family, model and stepping numbers (a virtual machine's name
    alone can be generic), e.g. ``Intel(R) Xeon(R) Processor (family 6, model 207, stepping 2)``."""
    fields = _first_processor()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(numbers).replace('cpu family', 'family')})" if numbers else name


def native_level(flags: set[str] | None = None) -> str:
    """The widest vector instruction set of this CPU the kernels could use: ``AVX512``, ``AVX2``,
    ``SSE4.2`` or ``below-SSE4.2`` (x86-64), else the machine's name (``aarch64``)."""
    if not is_x86():
        return platform.machine() or "unknown"
    flags = cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "SSE4.2" if "sse4_2" in flags else "below-SSE4.2"


def pinned_environment(flags: set[str] | None = None) -> dict[str, str]:
    """The environment variables that pin every kernel library to :data:`LEVEL` on this CPU
    (empty off x86-64, where there is nothing to pin to)."""
    if not is_x86():
        return {}
    flags = cpu_flags() if flags is None else flags
    numpy_off = [target for target, needs in _NUMPY_ABOVE_AVX2.items() if set(needs) <= flags]
    return {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2,STRICT",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_off),
        "NUMBA_CPU_NAME": "haswell",
    }


_BEFORE: dict[str, str | None] = {}  # the switches as the environment had them before pin()


def pin() -> None:
    """Pin this process's kernels (and those of every process it starts) unless ``$MMCL_PORTABLE_KERNELS``
    is ``0``; then leave the environment as it is (a native process uses what it was started with)."""
    if requested():
        pinned = pinned_environment()
        for name in pinned:
            _BEFORE.setdefault(name, os.environ.get(name))
        os.environ.update(pinned)
    if "torch" in sys.modules:
        _switch_onednn()
        _answer_mkl_vendor()
    elif requested() and is_x86() and not mkl_branch_honoured() and not any(
            isinstance(finder, _AfterTorch) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorch())


def native_environment() -> dict[str, str]:
    """This process's environment as it was before :func:`pin`, with ``$MMCL_PORTABLE_KERNELS=0``:
    for a process that is to compute with the machine's own kernels."""
    environment = dict(os.environ)
    for name, value in _BEFORE.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment | {SWITCH: "0"}


def _switch_onednn() -> None:
    import torch  # here, not above: mmcl imports this module before numpy and torch (pin)

    # Pinned, oneDNN is off on the CPU: its blocking follows the cache sizes (see the module's docstring).
    torch.backends.mkldnn.enabled = not requested()


def state() -> dict:
    """What this process's kernels are: ``portable`` (whether they are pinned to :data:`LEVEL`, as
    the libraries report them), ``requested``, the ``cpu`` (model, native level) and each library's
    ``kernels``. Imports torch and numpy."""
    # here, not above: mmcl imports this module before numpy and torch (pin)
    import numpy
    import torch

    _switch_onednn()
    features = numpy._core._multiarray_umath.__cpu_features__  # what numpy dispatches to (numpy >= 2)
    numpy_above = sorted(t for t in _NUMPY_ABOVE_AVX2 if features.get(t))
    blas = _openblas_cores()
    kernels = {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn": "off" if not torch.backends.mkldnn.enabled else os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkl": os.environ.get("MKL_CBWR", "native"),
        "numpy_dispatch_above_avx2": numpy_above,
        "openblas": blas,
    }
    reasons = []
    if not is_x86():
        reasons.append(f"not an x86-64 CPU ({platform.machine()})")
    elif native_level() not in ("AVX512", "AVX2"):
        reasons.append(f"this CPU has no {LEVEL} ({native_level()})")
    if kernels["aten"] != LEVEL:
        reasons.append(f"torch dispatches {kernels['aten']} kernels")
    if numpy_above:
        reasons.append(f"numpy dispatches {' '.join(numpy_above)} (numpy was imported before mmcl)")
    if any(core != "Haswell" for core in blas):
        reasons.append(f"OpenBLAS runs {', '.join(sorted(set(blas)))} kernels (loaded before mmcl)")
    if kernels["onednn"] != "off" or kernels["mkl"] != pinned_environment().get("MKL_CBWR"):
        reasons.append("oneDNN or MKL not pinned")
    # The branch MKL really computes on, read from MKL: the variable alone does not say it (MKL read it
    # at its first call, and honours it on Intel CPUs unless told the vendor: _answer_mkl_vendor).
    vendor = cpu_vendor()
    kernels["mkl_branch"] = mkl_branch()
    kernels["mkl_vendor"] = ("Intel (this CPU)" if mkl_branch_honoured(vendor) else
                             f"{_MKL_VENDOR.get('answer', 'left to MKL')} ({_MKL_VENDOR.get('why', 'not asked')})")
    if kernels["mkl_branch"] not in ("unknown", pinned_environment().get("MKL_CBWR")):
        reasons.append(f"MKL computes on its {kernels['mkl_branch']} branch ({vendor}; MKL's vendor answer "
                       f"{kernels['mkl_vendor']})")
    return {"portable": requested() and not reasons, "requested": requested(), "level": LEVEL,
            "why_not": reasons if requested() else [f"{SWITCH}=0 (runtime.portable_kernels: false)"],
            "cpu": {"model": cpu_model(), "native_level": native_level(), "vendor": vendor},
            "kernels": kernels}


def _openblas_cores() -> list[str]:
    """The kernel family of every OpenBLAS loaded in this process (numpy's, scipy's)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency of the lock
        return []
    return [str(info.get("architecture")) for info in threadpool_info() if info.get("internal_api") == "openblas"]


def machine_tag() -> str:
    """Names the kernels of an unpinned process: ``native-<level>`` (where its caches live, what its
    run identities hold)."""
    return f"native-{native_level().lower()}"


def require(portable: bool) -> None:
    """Raise :class:`mmcl.config.ConfigError` (one line, with the remedy) unless this process
    computes as ``runtime.portable_kernels`` (``portable``) asks: pinned kernels, or native ones."""
    if portable and not requested():
        raise ConfigError(f"runtime.portable_kernels is true but this process was started with {SWITCH}=0: "
                               f"start it without, or set runtime.portable_kernels=false")
    if not portable and requested():
        raise ConfigError(f"runtime.portable_kernels=false needs a process started with {SWITCH}=0 (the "
                               f"mmcl command line restarts itself so; in Python set it before importing mmcl)")
    if portable:
        current = state()
        if not current["portable"]:
            raise ConfigError("the CPU kernels could not be pinned to AVX2 (" + "; ".join(current["why_not"])
                                   + "): import mmcl before numpy and torch (restart the kernel), or set "
                                     "runtime.portable_kernels=false for numbers bound to this machine")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` intra-op threads, restoring the previous count afterwards."""
    import torch  # here, not above: mmcl imports this module before numpy and torch (pin)

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
