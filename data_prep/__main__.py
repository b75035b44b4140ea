"""``python -m data_prep <dataset> --raw DIR --out DIR [--profile paper]``: prepare one dataset."""
from __future__ import annotations

import argparse
import logging
import sys

import yaml

import data_prep
from mmcl.atomic import DiskWriteError


def _options(pairs: list[str]) -> dict:
    """``key=value`` (YAML values; ``a.b=v`` sets a nested option) -> options dict."""
    options: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--option {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        node = options
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    parser.add_argument("dataset", nargs="?", choices=sorted(data_prep.DATASETS), help="dataset to prepare")
    parser.add_argument("--raw", help="raw-data folder (what you downloaded)")
    parser.add_argument("--out", help="processed folder to write (point benchmarks.<name>.path here)")
    parser.add_argument("--profile", default="paper", help="profile whose data sizes to use (default: paper)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, e.g. languages=[EN,DE] or video.classes=[Biking,Diving]")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                        help="unreadable file: skip it and count it (default) or stop")
    parser.add_argument("--max-skipped-fraction", type=float, default=0.05, metavar="F",
                        help="with --on-error skip: stop when more than this fraction of a split is "
                             "unreadable (default: 0.05); a class losing all its samples always stops")
    parser.add_argument("--fetch", action="store_true", help="download first where a client exists (SAMSEMO)")
    parser.add_argument("--layout", action="store_true", help="print the download and raw layout, then exit")
    parser.add_argument("--list", action="store_true", help="list the datasets, then exit")
    parser.add_argument("--force", action="store_true", help="prepare again even if a complete copy exists")
    parser.add_argument("--shard-size", type=int, default=64, help="samples per resumable shard")
    parser.add_argument("--checksums", help="sha256sum-format file to verify (default: <raw>/SHA256SUMS if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list or not args.dataset:
        for name, cls in sorted(data_prep.DATASETS.items()):
            print(f"{name:16s} {cls.description}")
        return 0
    if args.layout:
        print(data_prep.expected_layout(args.dataset))
        return 0
    if not args.raw or not args.out:
        parser.error("--raw and --out are required")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = _options(args.option)
    try:
        if args.fetch:
            data_prep.fetch(args.dataset, args.raw, options)
        summary = data_prep.prepare(args.dataset, args.raw, args.out, args.profile, options=options,
                                    on_error=args.on_error, force=args.force, shard_size=args.shard_size,
                                    progress=not args.quiet, overrides=args.set, checksum_file=args.checksums,
                                    max_skipped_fraction=args.max_skipped_fraction)
    except (data_prep.PrepError, DiskWriteError) as error:  # DiskWriteError: a full or read-only --out
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
