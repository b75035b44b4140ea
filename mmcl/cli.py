"""The ``mmcl`` command line: ``run``, ``list``, ``bench``, ``tune``, ``calibrate``, ``reproduce``, ``verify``, ``inputs``, ``claims``.

    mmcl run --scenario class_incremental --method lwf --seed 0 --profile tiny --set train.epochs=5
    mmcl list methods
    mmcl bench --method finetune --profile tiny
    mmcl tune --method lwf --scenario class_incremental --profile tiny --write-defaults
    mmcl reproduce --profile tiny
    mmcl claims --profile tiny --update-docs
    mmcl verify --profile tiny --runs runs
    mmcl inputs --profile smoke
    mmcl calibrate --profile tiny --seeds 0 1 --document docs/benchmark.md
    mmcl calibrate --literature --profile tiny
    mmcl --version

Each subcommand is a pair of functions: ``_add_<command>`` declares its arguments (in :func:`_parser`) and
points ``set_defaults(func=...)`` at ``_cmd_<command>``, which does the work and returns the exit code;
:func:`main` only parses, dispatches, and turns bad input into a one-line error (exit code 2).

The heavy libraries (torch, open_clip, pandas) are imported by the command that uses them, never at
the top of this module: ``mmcl --help``, ``mmcl --version`` and ``mmcl list`` import none of them
(``list`` reads the methods from :mod:`mmcl.method_index`; ``tests/test_cli.py`` checks both).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from mmcl import __version__, kernels, method_index
from mmcl.atomic import DiskWriteError
from mmcl.config import SCENARIOS, ConfigError, PreparedDataError, available_profiles, list_parameter, load_config
from mmcl.progress import RunTime, enabled, format_seconds, sweep_eta
from mmcl.tuned import write_defaults

# The errors that are bad input (a profile, a key, a missing file or prepared data, a full disk): main()
# prints them as one line, "mmcl: error: ...", and exits 2.
INPUT_ERRORS = (ConfigError, FileNotFoundError, PreparedDataError, DiskWriteError)


def _add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="tiny", help="smoke | tiny | paper, or a YAML file (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile key, e.g. --set train.epochs=5 (repeatable)")


def package_version() -> str:
    """The installed package's version (its metadata); in a checkout without one, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        return version("mmcl")
    except PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as stream:
            return tomllib.load(stream)["project"]["version"]
    except (ImportError, OSError, ValueError, KeyError):
        return __version__


class _Version(argparse.Action):
    """``--version``: print ``mmcl <version>`` and exit 0 (the version is looked up only then)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {package_version()}")
        parser.exit()


# ---------------------------------------------------------------------------------------------------------
# The parser: one ``_add_<command>`` per subcommand, in the order ``mmcl --help`` lists them.

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description="Multi-modal continual learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    parser.add_argument("--version", action=_Version, help="print the package version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_list, _add_bench, _add_tune, _add_calibrate, _add_reproduce, _add_verify,
                _add_inputs, _add_claims):
        add(commands)
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="run (or resume) one continual-learning run")
    run.add_argument("--scenario", required=True, choices=SCENARIOS)
    run.add_argument("--method", required=True)
    run.add_argument("--benchmark", help="default: the scenario's benchmark in the profile")
    run.add_argument("--seed", type=int, action="append", help="repeatable; default: the profile's seed")
    run.add_argument("--output-dir", help="default: runtime.output_dir of the profile")
    run.add_argument("--variant", help="a named ablation of the method (see `mmcl list methods`); runs go to <method>~<variant>")
    run.add_argument("--force", action="store_true", help="delete an existing run folder and start again")
    _add_profile_arguments(run)
    run.set_defaults(func=_cmd_run)


def _add_list(commands) -> None:
    listing = commands.add_parser("list", help="list methods, scenarios, benchmarks or profiles")
    listing.add_argument("what", nargs="?", default="all", choices=["all", "methods", "scenarios", "benchmarks", "profiles"])
    listing.add_argument("--profile", default="tiny")
    listing.set_defaults(func=_cmd_list)


def _add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="training-step throughput and memory of a method")
    bench.add_argument("--method", required=True)
    bench.add_argument("--scenario", default="class_incremental", choices=SCENARIOS)
    bench.add_argument("--variant", help="a named ablation of the method (see `mmcl list methods`)")
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument("--peak-tflops", type=float, help="the device's stated peak in the run's precision "
                                                         "(e.g. a GPU's datasheet bf16 TFLOP/s), to report the share of it")
    _add_profile_arguments(bench)
    bench.set_defaults(func=_cmd_bench)


def _add_tune(commands) -> None:
    tune = commands.add_parser("tune", help="choose a method's hyper-parameters on validation data (same budget for all)")
    tune.add_argument("--method", help="a registered method (or --all)")
    tune.add_argument("--scenario", choices=SCENARIOS, help="default with --all: every scenario of the profile")
    tune.add_argument("--all", action="store_true", help="every trainable method on every compatible scenario")
    tune.add_argument("--benchmark", help="default: the scenario's benchmark in the profile")
    tune.add_argument("--seeds", type=int, nargs="+", help="every trial point runs once per seed, scored by the mean "
                                                         "(default: tuning.seeds of the profile, 0 1)")
    tune.add_argument("--seed", type=int, help="one seed: the same as --seeds SEED")
    tune.add_argument("--trials", type=int, help="trials per round (default: tuning.trials of the profile; the same "
                                                 "for every method)")
    tune.add_argument("--max-extensions", type=int, help="rounds that move a grid past an edge choice (default: "
                                                         "tuning.max_extensions of the profile, 3)")
    tune.add_argument("--output-dir", help="default: runtime.output_dir of the profile")
    tune.add_argument("--write-defaults", action="store_true",
                      help="write the chosen values into mmcl/profiles/tuned/<profile>.yaml")
    _add_profile_arguments(tune)
    tune.set_defaults(func=_cmd_tune)


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser("calibrate", help="check the embedded benchmark's calibration targets "
                                                      "(zero-shot, joint, replay, finetune on each main benchmark); "
                                                      "--literature: check the stored runs against published orderings")
    calibrate.add_argument("--seeds", type=int, nargs="+", default=[0])
    calibrate.add_argument("--output-dir", help="runs (default: runs/calibration; with --literature, where the "
                                                "profile's runs are: runtime.output_dir of the profile)")
    calibrate.add_argument("--literature", action="store_true",
                           help="trains nothing: do the stored runs of each scenario's main benchmark order the "
                                "established methods as their papers do (mmcl/literature.yaml, docs/literature.md)")
    calibrate.add_argument("--literature-file", help="with --literature: another literature file "
                                                     "(default: the one shipped, mmcl/literature.yaml)")
    calibrate.add_argument("--table-dir", default="figures", help="calibration tables (default: figures)")
    calibrate.add_argument("--document", help="a Markdown file whose calibration block gets the tables, "
                                              "e.g. docs/benchmark.md")
    calibrate.add_argument("--block", default="calibration",
                           help="with --document: the block between <!-- BLOCK:start --> and <!-- BLOCK:end --> "
                                "(default: calibration; another name for a budget compared with --set)")
    _add_profile_arguments(calibrate)
    calibrate.set_defaults(func=_cmd_calibrate)


def _add_reproduce(commands) -> None:
    reproduce = commands.add_parser("reproduce", help="run the notebook sequence with papermill (resumes)")
    reproduce.add_argument("--output-dir", help="runs and executed notebooks (default: runtime.output_dir)")
    reproduce.add_argument("--figures-dir", default="figures", help="tables and figures (default: figures)")
    reproduce.add_argument("--seeds", type=int, nargs="+", help="default: the profile's runtime.seeds (tiny: 0 1 2)")
    reproduce.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 30_figures_and_tables")
    reproduce.add_argument("--rerun-notebooks", action="store_true",
                           help="execute every notebook even when its executed copy is up to date")
    reproduce.add_argument("--rerun-stale", action="store_true",
                           help="remove the complete runs made by other code (another source fingerprint) first, "
                                "so the notebooks train them again")
    reproduce.add_argument("--update-docs", action="store_true",
                           help="also rewrite the claims blocks of docs/methods/*.md from figures/claims.csv")
    reproduce.add_argument("--executor", choices=["auto", "local", "pool", "submitit-local", "slurm"],
                           help="where the runs execute: in process (local), in a pool of single-threaded worker "
                                "processes (pool), pool on CPU and local on GPU (auto), one submitit job per run in "
                                "local subprocesses (submitit-local) or on SLURM (slurm); default: "
                                "runtime.executor.name")
    for flag, key, kind in (("--partition", "partition", str), ("--gpus-per-node", "gpus_per_node", int),
                            ("--timeout-min", "timeout_min", int), ("--mem-gb", "mem_gb", float),
                            ("--parallelism", "parallelism", str), ("--account", "account", str),
                            ("--qos", "qos", str)):
        reproduce.add_argument(flag, dest=f"executor_{key}", type=kind, metavar=key.split("_")[0].upper(),
                               help=f"runtime.executor.{key} (SLURM jobs; parallelism also pool and submitit-local, "
                                    f"a number or auto)")
    _add_profile_arguments(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)


def _add_verify(commands) -> None:
    verify = commands.add_parser("verify", help="compare a reproduction's main-table numbers with the expected ones "
                                                "(mmcl/profiles/expected/<profile>.yaml): pass/fail table")
    verify.add_argument("--runs", help="the runs folder (default: runtime.output_dir of the profile)")
    verify.add_argument("--expected", help="the expected-results file (default: mmcl/profiles/expected/<profile>.yaml)")
    verify.add_argument("--write-expected", action="store_true",
                        help="write the expected-results file from the runs instead (keeps its paper entries)")
    verify.add_argument("--all", action="store_true", help="list every entry, not only those that do not pass")
    _add_profile_arguments(verify)
    verify.set_defaults(func=_cmd_verify)


def _add_inputs(commands) -> None:
    inputs = commands.add_parser("inputs", help="the sha256 of the backbone and of each embedded benchmark this "
                                                "machine makes (built if missing), with its CPU and kernels")
    inputs.add_argument("--benchmark", action="append", help="repeatable; default: every generated benchmark")
    inputs.add_argument("--seeds", type=int, nargs="+",
                        help="the run seeds whose backbones to digest (default: the profile's runtime.seeds)")
    inputs.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_profile_arguments(inputs)
    inputs.set_defaults(func=_cmd_inputs)


def _add_claims(commands) -> None:
    claims = commands.add_parser("claims", help="measure the papers' claims on the stored runs (figures/claims.{md,csv})")
    claims.add_argument("--output-dir", help="where the runs are (default: runtime.output_dir of the profile)")
    claims.add_argument("--figures-dir", default="figures", help="where claims.{md,csv} go (default: figures)")
    claims.add_argument("--update-docs", action="store_true",
                        help="rewrite the claims blocks of the method pages from the written claims.csv")
    claims.add_argument("--docs-dir", help="the method pages (default: docs/methods of this checkout)")
    claims.add_argument("--replicate", action="store_true",
                        help="measure the claims on two disjoint seed sets and print how their verdicts agree "
                             "(writes nothing)")
    claims.add_argument("--sets", nargs=2, metavar="SEEDS",
                        help='with --replicate: the two seed sets, e.g. --sets "0 1 2" "3 4 5" '
                             "(default: the seeds run, split in halves)")
    _add_profile_arguments(claims)
    claims.set_defaults(func=_cmd_claims)


# ---------------------------------------------------------------------------------------------------------
# The commands: ``_cmd_<command>(args) -> exit code``. Every one imports the heavy modules it needs
# (mmcl.engine, torch, pandas, ...) inside itself, on purpose: so that ``mmcl list``, ``--help`` and
# ``--version`` stay instant and import no heavy library (tests/test_cli.py). Keep those imports local;
# the light ones (configuration, progress, the method index, the tuned defaults) are at the top.

def _list(what: str, profile: str, methods: dict[str, dict] | None = None) -> str:
    """The listing; ``methods``: :func:`mmcl.method_index.methods` (the index, no torch) unless given."""
    lines = []
    if what in ("all", "methods"):
        if methods is None:
            methods = method_index.methods()
        lines.append("methods:")
        for name, method in sorted(methods.items()):
            lines.append(f"  {name:14s} {method['description']}  [{', '.join(method['compatible_scenarios'])}]")
            if method["ablations"]:
                lines.append(f"  {'':14s} variants: {', '.join(method['ablations'])}")
            if method["comparisons"]:
                lines.append(f"  {'':14s} comparisons ({', '.join(method['comparison_scenarios'])}): "
                             f"{', '.join(method['comparisons'])}")
    if what in ("all", "scenarios"):
        lines.append("scenarios:")
        lines += [f"  {name}" for name in SCENARIOS]
    if what in ("all", "benchmarks"):
        config = load_config(profile)
        lines.append(f"benchmarks ({profile} profile):")
        for name, spec in config.benchmarks.items():
            lines.append(f"  {name:22s} {spec.source:9s} {'+'.join(spec.modalities):20s} {spec.description}")
    if what in ("all", "profiles"):
        lines.append("profiles:")
        lines += [f"  {name}" for name in available_profiles()]
    return "\n".join(lines)


def _cmd_list(args) -> int:
    print(_list(args.what, args.profile))
    return 0


def _cmd_run(args) -> int:
    # torch and open_clip: kept off `mmcl list` (see the module's docstring)
    from mmcl.engine import run
    from mmcl.hparams import variant_overrides
    from mmcl.records import RunFolderInUse, source_fingerprint

    config = load_config(args.profile, args.overrides)
    hparams = variant_overrides(args.method, args.variant) if args.variant else None
    seeds, measured = args.seed or [config.seed], []
    for number, seed in enumerate(seeds, 1):
        begun = time.perf_counter()
        try:
            result = run(config, args.scenario, args.method, seed=seed, benchmark=args.benchmark,
                         output_dir=args.output_dir, force=args.force, variant=args.variant, hparams=hparams)
        except RunFolderInUse as error:
            print(f"mmcl: error: {error}", file=sys.stderr)
            return 2
        status = "reused complete run" if result.skipped else "finished"
        eta = ""
        if len(seeds) > 1:  # several seeds: a line per run with the ETA of the others (mmcl.progress)
            recorded = (result.metrics.get("timing") or {}).get("run_seconds_this_session")
            if not result.skipped:
                measured.append(RunTime((), args.method, time.perf_counter() - begun, measured=True))
            elif recorded:  # a reused run: what its record says it took
                measured.append(RunTime((), args.method, float(recorded), measured=False))
            left = sweep_eta([((), args.method)] * (len(seeds) - number), measured)
            eta = f" ({number}/{len(seeds)}, ETA {format_seconds(left)})"
        print(f"{status}: {result.run_dir}{eta}", flush=True)
        if result.skipped and result.made_by_other_code:
            made_by = result.metrics["run"].get("source_fingerprint") or "unknown"
            print(f"mmcl: warning: {result.run_dir} was made by other code (source {made_by}, this code "
                  f"{source_fingerprint()}); --force runs it again", file=sys.stderr)
        for mode, summary in result.metrics["modes"].items():
            print(f"  {mode}: final {summary['final_accuracy']:.2f}  "
                  f"avg-incremental {summary['average_incremental_accuracy']:.2f}  "
                  f"forgetting {summary['forgetting']:.2f}")
    return 0


def _cmd_bench(args) -> int:
    from mmcl.bench import bench_method, format_bench  # torch: kept off `mmcl list` (docstring)

    config = load_config(args.profile, args.overrides)
    result = bench_method(config, args.method, args.scenario, steps=args.steps, variant=args.variant,
                          peak_tflops=args.peak_tflops)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _tune_jobs(args, config) -> tuple[list[tuple[str, str]], list[int] | None]:
    """The checked arguments of ``mmcl tune``: its (method, scenario) jobs and its seeds."""
    from mmcl.methods import REGISTRY  # torch: kept off `mmcl list` (docstring)

    if args.all == bool(args.method):
        raise ConfigError("mmcl tune: give --method M --scenario S, or --all")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials: must be at least 1, got {args.trials}")
    if args.seed is not None and args.seeds is not None:
        raise ConfigError("mmcl tune: give --seeds or --seed, not both")
    seeds = args.seeds if args.seeds is not None else [args.seed] if args.seed is not None else None
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: give distinct seeds, got {seeds}")
    if args.max_extensions is not None and args.max_extensions < 0:
        raise ConfigError(f"--max-extensions: must be at least 0, got {args.max_extensions}")
    if args.all:
        scenarios = [args.scenario] if args.scenario else list(config.scenarios)
        jobs = [(name, s) for name in sorted(REGISTRY) for s in scenarios if s in REGISTRY[name].compatible_scenarios]
    else:
        if not args.scenario:
            raise ConfigError("mmcl tune: --scenario is required with --method")
        jobs = [(args.method, args.scenario)]
    return jobs, seeds


def _cmd_tune(args) -> int:
    # torch and open_clip: kept off `mmcl list`; the methods register before the profile is read
    from mmcl.methods import method_class
    from mmcl.tuning import tune_many

    config = load_config(args.profile, args.overrides)
    jobs, seeds = _tune_jobs(args, config)
    pairs = []
    for name, scenario in jobs:
        if not method_class(name).trains:
            print(f"skipped {name}: it trains nothing, so there is nothing to tune")
            continue
        pairs.append((scenario, name))
    for record in tune_many(config, pairs, seeds=seeds, benchmark=args.benchmark, trials=args.trials,
                            output_dir=args.output_dir, max_extensions=args.max_extensions):
        rounds = len(record["rounds"])
        print(f"{record['method']} · {record['scenario']} · {record['benchmark']}: chose {record['chosen']} "
              f"(validation {record['chosen_score']:.2f}, mean over seeds {', '.join(map(str, record['seeds']))}; "
              f"{record['budget']} trials per round, {rounds} round{'s' if rounds > 1 else ''}, "
              f"{record['runs']} runs); record {record['record']}")
        for edge in record["edges"]:
            print(f"  at edge: {edge['key']}={edge['value']} ({edge['side']} end of "
                  f"{record['grid'][edge['key']]}): {edge['reason']}")
        if args.write_defaults:
            print(f"  defaults written to {write_defaults(record)}")
    return 0


def _cmd_calibrate(args) -> int:
    if args.literature:
        return _calibrate_literature(args)
    from mmcl.calibrate import calibrate  # torch: kept off `mmcl list` (docstring)

    config = load_config(args.profile, args.overrides)
    args.output_dir = args.output_dir or "runs/calibration"
    command = " ".join(["mmcl calibrate", f"--profile {args.profile}", "--seeds", *map(str, args.seeds),
                        *[f"--set {o}" for o in args.overrides]])
    targets = calibrate(config, args.seeds, args.output_dir, args.table_dir, args.document, command,
                        progress=enabled(config.runtime.progress), block=args.block)
    from mmcl.results import display_table, to_markdown  # pandas: kept off `mmcl list` (docstring)

    print(to_markdown(display_table(targets)))
    failed = (targets["pass"] != "pass").sum()
    print(f"{len(targets) - failed} of {len(targets)} targets pass")
    return 0


def _calibrate_literature(args) -> int:
    """``mmcl calibrate --literature``: trains nothing; exit 1 when a published ordering fails."""
    from mmcl.calibrate import calibrate_literature  # torch: kept off `mmcl list` (docstring)

    config = load_config(args.profile, args.overrides)
    checks, text = calibrate_literature(config, args.output_dir or config.runtime.output_dir, args.table_dir,
                                        args.literature_file)
    print(text)
    return 1 if any(check.verdict == "FAIL" for check in checks) else 0


def _cmd_reproduce(args) -> int:
    from mmcl.reproduce import NOTEBOOKS, NotebookFailed, reproduce  # torch: kept off `mmcl list` (docstring)

    executor_keys = {k: v for k, v in vars(args).items() if k.startswith("executor_") and v is not None}
    args.overrides += [f"runtime.executor.{k[len('executor_'):]}={v}" for k, v in executor_keys.items()]
    if args.executor:
        args.overrides.append(f"runtime.executor.name={args.executor}")
    try:
        reproduce(args.profile, args.overrides, output_dir=args.output_dir, figures_dir=args.figures_dir,
                  seeds=args.seeds, notebooks=args.only or NOTEBOOKS, rerun=args.rerun_notebooks,
                  rerun_stale=args.rerun_stale, update_docs=args.update_docs)
    except NotebookFailed as error:
        print(f"mmcl reproduce: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args) -> int:
    from pathlib import Path

    from mmcl import results, verify  # torch: kept off `mmcl list` (docstring)

    config = load_config(args.profile, args.overrides)
    runs_root = Path(args.runs or config.runtime.output_dir)
    root = verify.profile_root(config.profile, runs_root)  # <runs>/<profile>; --runs runs/tiny: that folder itself
    path = Path(args.expected) if args.expected else verify.expected_file(config.profile)
    if args.write_expected:
        if not results.find_run_dirs(root):
            raise verify.no_runs_error(config.profile, root)
        command = f"mmcl verify --write-expected --profile {args.profile} --runs {args.runs or runs_root}"
        written = verify.write_expected(results.load_runs(root), path, config.profile, command)
        print(f"wrote {len(verify.read_expected(written)['results'])} expected numbers to {written}")
        return 0
    if not args.expected and not path.is_file():  # nothing to compare with is not a failed reproduction
        print(f"mmcl verify: no expected results for the {config.profile} profile ({path}); "
              f"`mmcl verify --write-expected --runs DIR` writes them from a full reproduction")
        return 0
    expected = verify.read_expected(path)
    if not results.find_run_dirs(root):  # one line, not a table of every expected number missing
        raise verify.no_runs_error(config.profile, root)
    runs = results.load_runs(root)
    table = verify.verify(runs, expected)
    shown = table if args.all else table[table["verdict"] != "pass"]
    if len(shown):
        print(results.to_markdown(shown.astype(object).where(shown.notna(), "-")))
    print(f"mmcl verify ({config.profile}, {root} against {path}): {verify.summary(table)}")
    note = verify.inputs_note(runs, expected)
    if note:
        print(note)
    return 0 if (table["verdict"] == "pass").all() else 1


def _cmd_inputs(args) -> int:
    from mmcl.verify import format_input_digests, input_digests  # torch: kept off `mmcl list` (docstring)

    config = load_config(args.profile, args.overrides)
    found = input_digests(config, args.benchmark, progress=enabled(config.runtime.progress),
                          seeds=args.seeds or config.runtime.seeds)
    print(json.dumps(found, indent=2) if args.json else format_input_digests(found))
    return 0


def _cmd_claims(args) -> int:
    from pathlib import Path

    # pandas, scipy and torch: kept off `mmcl list` (see the module's docstring)
    from mmcl import claims, results
    from mmcl.reproduce import DOCS_DIR

    config = load_config(args.profile, args.overrides)
    runs = results.load_runs(Path(args.output_dir or config.runtime.output_dir) / config.profile)
    if args.replicate:
        sets = [list_parameter(text, "--sets", int) for text in args.sets] if args.sets else None
        try:
            found = claims.replicate(runs, sets, results.appendix_benchmarks(config))
        except ValueError as error:
            raise ConfigError(f"--replicate: {error}") from None
        print(claims.replication_text(found))
        return 0
    paths = claims.write_claims(runs, args.figures_dir, results.appendix_benchmarks(config))
    table = claims.read_claims(paths["csv"])
    print(f"{claims.tally_text(table)}: {paths['md']}, {paths['csv']}")
    if args.update_docs:
        changed = claims.update_docs(paths["csv"], args.docs_dir or DOCS_DIR)
        print("rewritten: " + (", ".join(map(str, changed)) or "nothing (already up to date)"))
    return 0


# ---------------------------------------------------------------------------------------------------------

def _restart_for_kernels(args: argparse.Namespace) -> None:
    """Start this command again in a process whose CPU kernels are what the profile's
    ``runtime.portable_kernels`` asks (mmcl.kernels): the switch is read when mmcl is imported, so a
    command with ``--set runtime.portable_kernels=false`` cannot change it in this process."""
    if not hasattr(args, "profile") or not hasattr(args, "overrides"):
        return
    try:
        portable = load_config(args.profile, args.overrides).runtime.portable_kernels
    except (ConfigError, FileNotFoundError):
        return  # the command reports it
    if portable != kernels.requested():
        environment = os.environ | {kernels.SWITCH: "1"} if portable else kernels.native_environment()
        os.execve(sys.executable, [sys.executable, "-m", "mmcl.cli", *sys.argv[1:]], environment)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if argv is None:  # the command line itself (a caller of main() gets the one-line error instead)
        _restart_for_kernels(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # open_clip logs every model creation at INFO
    try:
        return args.func(args)
    except INPUT_ERRORS as error:
        print(f"mmcl: error: {error}", file=sys.stderr)  # DiskWriteError: a full or read-only disk, naming the file
        return 2


if __name__ == "__main__":
    sys.exit(main())
