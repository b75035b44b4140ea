"""Every command shown in the README and in the notebooks' introductions runs as written.

The commands are read from README.md's ``bash`` / ``sh`` / ``console`` code blocks (a block is a shell
session: its commands run in order, in one fresh folder), from the papermill parameter examples in the
README's prose (inline ``-p`` / ``-y``) and from the first markdown cell of every notebook. Each is:

- **run** as written when it is cheap, in a fresh working folder with a temporary ``MMCL_CACHE`` and
  the environment's ``bin`` first on ``PATH``: ``mmcl list``, ``mmcl --version``, ``mkdir``, ``python -m
  data_prep --list`` / ``--layout``, ``mmcl verify`` (no runs there: its one-line error and exit status 2),
  and ``papermill`` with ``--prepare-only`` added (papermill parses the command and writes the
  parameterised notebook without executing it; the parameters it injected are then checked as the
  notebook reads them: declared by its parameters cell, the profile and ``overrides`` load, list
  parameters parse, methods and benchmarks exist);
- **parsed** when it trains or needs data, a GPU or a cluster: ``mmcl <command> ...`` by the CLI's own
  parser (``mmcl.cli._parser``), then its profile and ``--set`` keys loaded (``load_config``), its method,
  variant, benchmark and notebooks looked up, and ``mmcl <command> --help`` run once per command;
  ``python -m data_prep <dataset> ...`` by data_prep's ``main`` with the preparation itself replaced by a
  check of the dataset options (``data_prep.adapter``) and of the profile overrides (a ``...`` stands for
  the ``--raw`` / ``--out`` of the dataset's full command above it); ``make <target>`` by ``make -n`` (a
  dry run), whose ``mmcl`` commands are parsed in turn.

A typo in a flag, a key, a method, a notebook name or a parameter fails here, naming the line.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
NOTEBOOKS = REPO / "notebooks"
SHELL_FENCES = ("bash", "sh", "shell", "console")
BIN = Path(sys.executable).parent


@dataclass
class Command:
    source: str  # README.md:<line> or notebooks/<name>.ipynb
    text: str  # as written (continuation lines joined)
    argv: list[str] = field(default_factory=list)


def _split(text: str) -> list[str]:
    return shlex.split(text, comments=True)


def readme_blocks() -> list[tuple[str, list[Command]]]:
    """The README's shell code blocks: (``README.md:<line>``, their commands in order)."""
    text = README.read_text()
    blocks = []
    for fence in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        if fence.group(1) not in SHELL_FENCES:
            continue
        first = text[:fence.start()].count("\n") + 2  # the block's first line
        commands, pending, start = [], "", first
        for number, line in enumerate(fence.group(2).splitlines(), first):
            if not pending:
                start = number
                line = line[2:] if fence.group(1) == "console" and line.startswith("$ ") else line
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            whole, pending = (pending + line).strip(), ""
            if _split(whole):
                commands.append(Command(f"README.md:{start}", whole, _split(whole)))
        blocks.append((f"README.md:{first - 1}", commands))
    return blocks


def parameter_examples() -> list[Command]:
    """The papermill parameter examples (inline ``-p ...`` / ``-y ...``) of each notebook's first
    markdown cell and of the README's prose (those apply to the scenario notebook: checked on
    10_scenario), each made a whole papermill command, and the whole ``papermill ...`` commands of
    the notebooks' first markdown cells."""
    examples = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        intro = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        for fragment in re.findall(r"`(-[py] [^`]+)`", intro.source):
            examples.append(Command(f"notebooks/{path.name}", f"papermill notebooks/{path.name} out.ipynb {fragment}"))
        examples += [Command(f"notebooks/{path.name}", text) for text in re.findall(r"`(papermill [^`]+)`", intro.source)]
    for line_number, line in enumerate(README.read_text().splitlines(), 1):
        for fragment in re.findall(r"`(-[py] [^`]+)`", line):
            examples.append(Command(f"README.md:{line_number}",
                                    f"papermill notebooks/10_scenario.ipynb out.ipynb {fragment}"))
    for example in examples:
        example.argv = _split(example.text)
    return examples


def readme_inline_commands() -> list[Command]:
    """``mmcl <command> <arguments>`` spans of the README's prose (a bare ``mmcl run`` names the
    command, it is no command line; ``[...]`` marks an optional part, checked with it)."""
    found = []
    for line_number, line in enumerate(README.read_text().splitlines(), 1):
        for span in re.findall(r"`(mmcl [a-z]+ [^`]+)`", line):
            if any(mark in span for mark in ("…", "...", "<")):
                continue
            text = span.replace("[", "").replace("]", "")
            found.append(Command(f"README.md:{line_number}", text, _split(text)))
    return found


# --------------------------------------------------------------------------------------------- checks
def _environment(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "MMCL_CACHE": str(cache)}


def _run(command: Command, cwd: Path, env: dict, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(command.argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == expect, (f"{command.source}: `{command.text}` exited with {done.returncode}, not "
                                       f"{expect}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def check_mmcl_arguments(command: Command, argv: list[str]) -> str:
    """Parse ``mmcl`` arguments with the CLI's parser and look up what they name; the subcommand."""
    from mmcl import cli
    from mmcl.config import SCENARIOS, ConfigError, load_config
    from mmcl.method_index import methods
    from mmcl.reproduce import NOTEBOOKS as SEQUENCE

    try:
        args = cli._parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"{command.source}: `{command.text}` does not parse (mmcl's argument parser exited {error.code})")
    where = f"{command.source}: `{command.text}`"
    overrides = list(getattr(args, "overrides", []))
    if args.command == "reproduce":  # as mmcl.cli.main turns the executor flags into keys
        overrides += [f"runtime.executor.{k[len('executor_'):]}={v}" for k, v in vars(args).items()
                      if k.startswith("executor_") and v is not None]
        overrides += [f"runtime.executor.name={args.executor}"] if args.executor else []
        assert not set(args.only or []) - set(SEQUENCE), f"{where}: --only names no notebook of {SEQUENCE}"
    try:
        config = load_config(args.profile, overrides) if hasattr(args, "profile") else None
        for name in {key.split(".")[1] for key in overrides if key.startswith("methods.")}:
            # A method's hyper-parameters are checked when its run is built (keys and values).
            from mmcl.methods import method_class

            method_class(name).make_config(config.methods.get(name, {}))
    except ConfigError as error:
        pytest.fail(f"{where}: {error}")
    index = methods()
    method = getattr(args, "method", None)
    if method:
        assert method in index, f"{where}: no method {method!r}"
        scenario = getattr(args, "scenario", None)
        assert scenario is None or scenario in index[method]["compatible_scenarios"], f"{where}: incompatible"
        variant = getattr(args, "variant", None)
        assert variant is None or variant in index[method]["ablations"] + index[method]["comparisons"], \
            f"{where}: {method} has no variant {variant!r}"
    if getattr(args, "scenario", None):
        assert args.scenario in SCENARIOS
    benchmark = getattr(args, "benchmark", None)
    for name in benchmark if isinstance(benchmark, list) else [benchmark] if benchmark else []:
        assert config is not None and name in config.benchmarks, f"{where}: no benchmark {name!r}"
    return args.command


def check_papermill(command: Command, cwd: Path, monkeypatch) -> None:
    """Run the papermill command as written plus ``--prepare-only`` (parses it and writes the
    parameterised notebook, executes nothing), then check the parameters as the notebook reads them."""
    from papermill.cli import papermill

    from mmcl.config import SCENARIOS, ConfigError, list_parameter, load_config
    from mmcl.method_index import methods

    where = f"{command.source}: `{command.text}`"
    monkeypatch.chdir(cwd)
    try:
        papermill.main([*command.argv[1:], "--prepare-only"], prog_name="papermill", standalone_mode=False)
    except SystemExit as error:  # click's usage errors
        pytest.fail(f"{where}: papermill exits {error.code}")
    except Exception as error:  # noqa: BLE001 - e.g. the output folder does not exist
        pytest.fail(f"{where}: papermill fails: {type(error).__name__}: {error}")
    output = cwd / command.argv[2]
    notebook = nbformat.read(output, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    declared_cell = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    injected_cell = next(c for c in cells if "injected-parameters" in c.metadata.get("tags", []))
    declared, values = {}, {}
    exec(declared_cell.source, {}, declared)  # plain assignments
    exec(injected_cell.source, {}, values)
    assert not set(values) - set(declared), f"{where}: the notebook declares no parameter {set(values) - set(declared)}"
    values = declared | values
    try:
        config = load_config(values["profile"], list_parameter(values.get("overrides"), "overrides") or [])
        list_parameter(values.get("seeds"), "seeds", int)
        names = {key: list_parameter(values.get(key), key) or [] for key in ("methods", "benchmarks", "scenarios")}
    except ConfigError as error:
        pytest.fail(f"{where}: {error}")
    index = methods()
    assert not set(names["methods"]) - set(index), f"{where}: no method {set(names['methods']) - set(index)}"
    assert not set(names["benchmarks"]) - set(config.benchmarks), f"{where}: no benchmark {names['benchmarks']}"
    assert not set(names["scenarios"]) - set(SCENARIOS), f"{where}: no scenario {names['scenarios']}"
    assert values.get("scenario", SCENARIOS[0]) in SCENARIOS, f"{where}: no scenario {values['scenario']!r}"


def check_data_prep(command: Command, full: dict[str, list[str]], monkeypatch) -> None:
    """``python -m data_prep <dataset> ...`` through data_prep's own ``main``, its preparation (and
    download) replaced by a check of the dataset's options and of the profile overrides."""
    import data_prep
    from data_prep.__main__ import main

    from mmcl.config import ConfigError, load_config

    argv = command.argv[3:]
    if "..." in argv:  # the README's shorthand for the --raw / --out of the dataset's command above
        at = argv.index("...")
        argv = argv[:at] + full[argv[0]] + argv[at + 1:]
    checked, problems = [], []

    def check(name, options, profile="paper", overrides=()):
        try:
            data_prep.adapter(name, options)  # unknown options are an error here
            load_config(profile, list(overrides or []))
        except (data_prep.PrepError, ConfigError) as error:
            problems.append(str(error))

    def prepare(name, raw, out, profile, options=None, overrides=None, **_):
        check(name, options, profile, overrides)
        checked.append(name)
        return "checked"

    monkeypatch.setattr(data_prep, "prepare", prepare)
    monkeypatch.setattr(data_prep, "fetch", lambda name, raw, options=None: check(name, options))
    try:
        code = main(argv)
    except SystemExit as error:
        pytest.fail(f"{command.source}: `{command.text}` does not parse (exit {error.code})")
    assert not problems, f"{command.source}: `{command.text}`: {problems}"
    assert code == 0 and checked == [argv[0]], f"{command.source}: `{command.text}` exits {code}"


# ---------------------------------------------------------------------------------------------- tests
def classify(argv: list[str]) -> str:
    """``run`` (cheap: as written), ``run-fails`` (``mmcl verify`` without runs: its one-line error),
    ``papermill`` (as written with ``--prepare-only``), ``parse`` (``mmcl`` and ``python -m data_prep``
    commands that train or need data, a GPU or a cluster), ``dry-run`` (``make``), or ``unknown``."""
    program, rest = argv[0], argv[1:]
    data_prep = argv[:3] == ["python", "-m", "data_prep"]
    if program == "mkdir" or (program == "mmcl" and (rest[:1] in (["list"], ["--version"], ["--help"])
                                                     or "--help" in rest)) \
            or (data_prep and {"--list", "--layout"} & set(rest)):
        return "run"
    if program == "mmcl" and rest[:1] == ["verify"]:
        return "run-fails"
    if program == "papermill":
        return "papermill"
    if program == "mmcl" or data_prep:
        return "parse"
    if program == "make":
        return "dry-run"
    return "unknown"


@pytest.fixture
def workdir(tmp_path, mmcl_cache):
    """A fresh working folder in which ``notebooks/`` is this checkout's, as at the repository root."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notebooks").symlink_to(NOTEBOOKS)
    return tmp_path / "work", _environment(Path(mmcl_cache))


def readme_commands() -> list[Command]:
    return [command for _, commands in readme_blocks() for command in commands]


def _full_data_prep_arguments() -> dict[str, list[str]]:
    """dataset -> the ``--raw DIR --out DIR`` of its full command in the README (what ``...`` stands for)."""
    full = {}
    for command in readme_commands():
        if command.argv[:3] == ["python", "-m", "data_prep"] and "--raw" in command.argv and "--out" in command.argv:
            raw, out = command.argv.index("--raw"), command.argv.index("--out")
            full.setdefault(command.argv[3], command.argv[raw:raw + 2] + command.argv[out:out + 2])
    return full


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda block: block[0])
def test_readme_block_runs_as_written(block, workdir, monkeypatch):
    """The commands of one README code block, in order, in one fresh folder: each run or parsed."""
    _, commands = block
    cwd, env = workdir
    helped: set[str] = set()
    for command in commands:
        kind = classify(command.argv)
        if kind == "run":
            _run(command, cwd, env)
        elif kind == "run-fails":  # no runs here: one error line and exit status 2, never a table
            done = _run(command, cwd, env, expect=2)
            errors = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(errors) == 1 and errors[0].startswith("mmcl: error: no complete runs of the"), done.stderr
        elif kind == "papermill":
            check_papermill(command, cwd, monkeypatch)
        elif kind == "parse" and command.argv[0] == "mmcl":
            subcommand = check_mmcl_arguments(command, command.argv[1:])
            if subcommand not in helped:  # the installed entry point knows the command
                _run(Command(command.source, f"mmcl {subcommand} --help", ["mmcl", subcommand, "--help"]), cwd, env)
                helped.add(subcommand)
        elif kind == "parse":
            check_data_prep(command, _full_data_prep_arguments(), monkeypatch)
        elif kind == "dry-run":
            dry = subprocess.run(["make", "-n", "-C", str(REPO), *command.argv[1:]], capture_output=True, text=True,
                                 timeout=60)
            assert dry.returncode == 0, f"{command.source}: `{command.text}`: {dry.stderr}"
            for line in dry.stdout.splitlines():
                if re.match(r"\S*bin/mmcl ", line):
                    check_mmcl_arguments(Command(command.source, line), line.split()[1:])
        else:
            pytest.fail(f"{command.source}: `{command.text}`: no rule runs or parses {command.argv[0]!r}; add one")
        # A comment that spells a command out (`make reproduce   # = .venv/bin/mmcl reproduce ...`) parses too.
        said = re.search(r"#\s*=\s*(\S*mmcl .+?)(?:,|$)", command.text)
        if said:
            check_mmcl_arguments(Command(command.source, said.group(1)), _split(said.group(1))[1:])


@pytest.mark.parametrize("command", parameter_examples(), ids=lambda c: f"{c.source} {c.text.partition('out.ipynb ')[2] or c.text}")
def test_papermill_parameter_examples_run_as_written(command, workdir, monkeypatch):
    check_papermill(command, workdir[0], monkeypatch)


def test_commands_in_the_readme_prose_parse():
    commands = readme_inline_commands()
    assert len(commands) >= 5
    for command in commands:
        check_mmcl_arguments(command, command.argv[1:])


def test_every_readme_command_has_a_rule_and_expensive_ones_are_only_parsed():
    """No shell command of the README is skipped; whatever trains, needs the tiny or paper profile,
    a cluster or real data, or is the whole pipeline (make) is parsed, never run."""
    commands = readme_commands()
    kinds = {command.text: classify(command.argv) for command in commands}
    assert "unknown" not in kinds.values(), [text for text, kind in kinds.items() if kind == "unknown"]
    for text, kind in kinds.items():
        if re.search(r"^(make|mmcl (run|bench|tune|reproduce|calibrate|inputs|claims)|python -m data_prep \S+ (?!--layout))",
                     text) and "--help" not in text:
            assert kind in ("parse", "dry-run"), text
    counts = {kind: sum(k == kind for k in kinds.values()) for kind in sorted(set(kinds.values()))}
    print(f"README shell commands: {len(commands)} ({counts}); papermill parameter examples: "
          f"{len(parameter_examples())}; mmcl commands in the prose: {len(readme_inline_commands())}")
