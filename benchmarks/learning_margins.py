"""The margin of every learning check of the test suite, with pinned and with native CPU kernels.

Runs the learning checks (tests/learning_check.py and the tiny-profile behaviour tests) twice with
empty caches: with the kernels pinned to AVX2 (the default, mmcl.kernels) and with this machine's own
(``MMCL_PORTABLE_KERNELS=0``), each check appending its statistic to a file
(``$MMCL_LEARNING_MARGINS``). Prints, per check and evaluation mode, the value under both settings,
the bar, and whether the verdict flips between them: a flip means the verdict rests on the last bits
of the computation (on an AVX2-only machine both settings are the same kernels, and nothing differs).
About 20 minutes on 2 cores.

    python benchmarks/learning_margins.py [--work DIR] [--all]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_tiny.py", "tests/test_engine.py", "tests/test_zoo.py", "tests/test_comm.py", "tests/test_moe_adapters.py",
         "tests/test_av_cil.py", "tests/test_prompt_family.py"]
SELECTION = "learn or forgets or upper_bound or forget_less"


def measure(work: Path, setting: str) -> dict:
    margins = work / f"{setting}.jsonl"
    margins.unlink(missing_ok=True)
    environment = {**os.environ, "MMCL_LEARNING_MARGINS": str(margins), "MMCL_TEST_CACHE": str(work / f"cache-{setting}")}
    environment["MMCL_PORTABLE_KERNELS"] = "1" if setting == "pinned" else "0"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, "-k", SELECTION],
                   cwd=ROOT, env=environment, stdout=subprocess.DEVNULL)  # failing checks are what we measure
    rows = {}
    for line in margins.read_text().splitlines():
        row = json.loads(line)
        rows[(row["test"].split("::", 1)[-1], row["mode"], row["statistic"])] = row
    return rows


def passes(row: dict) -> bool:
    return row["value"] >= row["bar"] if row["statistic"] == "errors_fixed" else row["value"] > row["bar"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the caches and margin files (default: a new temporary one)")
    parser.add_argument("--all", action="store_true", help="every check, not only those whose value moved")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="learning-margins-"))
    work.mkdir(parents=True, exist_ok=True)
    pinned, native = measure(work, "pinned"), measure(work, "native")
    keys = sorted(set(pinned) & set(native))
    moved = [k for k in keys if pinned[k]["value"] != native[k]["value"]]
    flips = [k for k in keys if passes(pinned[k]) != passes(native[k])]
    print(f"{len(keys)} checks; {len(moved)} moved between pinned and native kernels; {len(flips)} verdicts flip")
    print(f"{'check':78s} {'mode':18s} {'pinned':>8s} {'native':>8s} {'bar':>6s}")
    for key in keys if args.all else moved:
        test, mode, _ = key
        print(f"{test[-78:]:78s} {mode:18s} {pinned[key]['value']:8.3f} {native[key]['value']:8.3f} "
              f"{pinned[key]['bar']:6.2f}{'  FLIPS' if key in flips else ''}")
    print(f"margin files: {work}")


if __name__ == "__main__":
    main()
