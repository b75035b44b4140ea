"""Which MKL branch gives the same matrix products on every vendor's CPU, and at what speed?

mmcl pins MKL to its AVX2 branch in strict reproducibility mode (``mmcl.kernels``). Left to itself,
MKL honours that branch on Intel CPUs only; on another vendor's it runs its own dispatch, so an AMD
CPU computed other products and pre-trained another backbone until mmcl answered MKL's vendor
question itself (``mmcl.kernels._answer_mkl_vendor``). This script measures MKL left to itself (mmcl
is not imported): its ``COMPATIBLE`` branch (SSE2 without the approximate reciprocal instructions) is
the one Intel means to run the same code everywhere. It prints, for each
branch, a digest of a fixed chain of products at the tiny tower's shapes and the time of a 512^3
product (one thread, the best of five): run it on two machines of different vendors and compare the
digests. A branch whose digest is the same on both gives the same bytes on both.

    python benchmarks/mkl_branches.py
    python benchmarks/mkl_branches.py --branches COMPATIBLE,STRICT AVX2,STRICT
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# One process per branch: MKL reads MKL_CBWR once, at its first call. mmcl is not imported there, so
# that nothing overrides the branch; only the variable differs between the processes.
PRODUCTS = """
import hashlib, json, time
import torch
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
digest = hashlib.sha256()
x = torch.randn(2688, 96, generator=generator)  # a step's rows (32 x 4 frames x 21 tokens), width 96
for inner, outer in ((96, 288), (96, 96), (96, 192), (192, 96)):  # qkv, attention out, MLP up, MLP down
    weight = torch.randn(outer, inner, generator=generator) / inner ** 0.5
    y = torch.nn.functional.linear(x[:, :inner] if x.shape[1] >= inner else x.repeat(1, 2), weight)
    digest.update(y.numpy().tobytes())
    x = torch.tanh(y)
a, b = torch.randn(512, 512, generator=generator), torch.randn(512, 512, generator=generator)
best = float("inf")
for _ in range(5):
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    best = min(best, (time.perf_counter() - started) / 10)
print(json.dumps({"digest": digest.hexdigest()[:16], "ms": 1000 * best}))
"""

DEFAULT_BRANCHES = ("AVX2,STRICT", "SSE4_2,STRICT", "COMPATIBLE,STRICT", "AUTO")
# MKL's branch names (oneMKL developer guide, "Specifying Code Branches"); MKL itself takes any other
# value silently, as AUTO.
KNOWN = ("AUTO", "COMPATIBLE", "SSE2", "SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_E1", "AVX512_E2", "AVX512_E3",
         "AVX512_E4", "AVX2_E1", "AVX10")


def branch(value: str) -> str:
    """An ``MKL_CBWR`` value: a known branch, optionally ``,STRICT``."""
    name, _, flag = value.partition(",")
    if name not in KNOWN or flag not in ("", "STRICT"):
        raise argparse.ArgumentTypeError(f"{value!r} is not an MKL branch: one of {', '.join(KNOWN)}, "
                                         "optionally followed by ,STRICT")
    return value


def measure(value: str) -> dict:
    """The digest and 512^3 time of :data:`PRODUCTS` in a process whose ``MKL_CBWR`` is ``value``."""
    environment = {**os.environ, "MKL_CBWR": value, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    environment.pop("MKL_ENABLE_INSTRUCTIONS", None)
    done = subprocess.run([sys.executable, "-c", PRODUCTS], env=environment, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"MKL_CBWR={value}: the products failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", nargs="+", type=branch, default=list(DEFAULT_BRANCHES), help="MKL_CBWR values")
    args = parser.parse_args(argv)
    from mmcl.kernels import cpu_model, cpu_vendor

    print(f"{cpu_model()}, {cpu_vendor()}, one thread")
    print(f"| MKL_CBWR | products' digest | 512^3 product (ms) |\n|:--|:--|--:|")
    for value in args.branches:
        found = measure(value)
        print(f"| `{value}` | `{found['digest']}` | {found['ms']:.2f} |")


if __name__ == "__main__":
    main()
