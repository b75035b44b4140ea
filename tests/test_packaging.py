"""The wheel carries everything an installed ``mmcl`` reads at run time: every module, the profiles,
the model configs and the notebooks (kept at the top level of the repository, shipped as
``mmcl/notebooks``)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_modules_profiles_model_configs_and_notebooks(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("mmcl", "data_prep", "notebooks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("mmcl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = {f"mmcl/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "mmcl" / "profiles").rglob("*.yaml")}  # tuned/ too
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "mmcl" / "models" / "configs").glob("*.json")}
    expected.add("mmcl/methods/index.json")  # the method index `mmcl list` reads (mmcl.method_index)
    expected |= {p.relative_to(ROOT).as_posix() for folder in ("mmcl", "data_prep")
                 for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    from mmcl.reproduce import NOTEBOOKS, notebook_source  # the sequence's source notebooks (one per scenario sweep)

    assert {f"mmcl/notebooks/{notebook_source(n)[0].name}" for n in NOTEBOOKS} == \
        {n for n in expected if n.startswith("mmcl/notebooks/")}
    assert {"mmcl/profiles/smoke.yaml", "mmcl/models/configs/mmcl-micro.json"} <= expected
    assert sorted(expected - names) == []


def test_the_readme_contents_list_every_section_and_docs_index_every_doc():
    import re

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    code = False
    headings = []
    for line in readme.splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and re.match(r"#{2,3} ", line) and line != "## Contents":
            headings.append(line.split(" ", 1)[1])
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^ *- \[(.*)\]\(#[^)]*\)$", contents, flags=re.MULTILINE)
    assert listed == headings  # every section, in order, nothing else
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    docs = {p.relative_to(root / "docs").as_posix() for p in (root / "docs").rglob("*.md")} - {"index.md"}
    assert docs == set(re.findall(r"\]\(([\w/]+\.md)\)", index)), "docs/index.md lists every doc, one line each"
