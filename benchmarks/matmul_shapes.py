"""Would running several runs in lock-step lift the matrix products of a training step?

Lock-step runs (the seeds or variants of one cell in one process) would concatenate their batches
through the frozen blocks, multiplying the rows of every product by the number of runs. This
measures one thread's rate (GFLOP/s, float32, pinned kernels) of the tiny tower's products at a
step's row count (batch x frames x tokens) and at 3 and 9 times as many rows, beside one large
square product: if the step's shapes already run at the large product's rate, concatenation has
nothing to gain there, and the step's missing rate is in the work between the products.

    python benchmarks/matmul_shapes.py                 # tiny's shapes: width 96, MLP 192, qkv 288
    python benchmarks/matmul_shapes.py --rows 2688 --width 768 --hidden 3072
"""
from __future__ import annotations

import argparse
import time

import mmcl  # noqa: F401 - first: pins the CPU kernels


def rate(rows: int, inner: int, outer: int, repeats: int) -> float:
    import torch

    a, w = torch.randn(rows, inner), torch.randn(outer, inner)
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(5):  # the best of 5 timings of `repeats` products: the least disturbed by other load
        started = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(a, w)
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * rows * inner * outer / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32 * 4 * 21, help="a step's rows: batch x frames x tokens")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=192)
    args = parser.parse_args()
    import torch

    from mmcl.kernels import cpu_model

    torch.set_num_threads(1)
    large = rate(2048, 2048, 2048, 3)
    print(f"{cpu_model()}, one thread: a 2048^3 product runs at {large:.1f} GFLOP/s")
    shapes = {"qkv projection": (args.width, 3 * args.width), "attention output": (args.width, args.width),
              "MLP up": (args.width, args.hidden), "MLP down": (args.hidden, args.width)}
    print(f"{'product':18s} " + " ".join(f"{f'x{k} rows':>16s}" for k in (1, 3, 9)))
    for name, (inner, outer) in shapes.items():
        cells = []
        for factor in (1, 3, 9):
            value = rate(args.rows * factor, inner, outer, max(5, 200 // factor))
            cells.append(f"{value:6.1f} ({value / large:4.0%})")
        print(f"{name:18s} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
