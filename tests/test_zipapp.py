"""The zipapp and the installed commands (SPEC Z1, Z2).

The pyz is built once per session, then run by every CPython 3.8-3.13 under /root/.pyenv, with
no PyYAML, no PYTHONPATH and a PATH on which `python`/`python3` is that same interpreter: the
bare server that the zipapp is for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build_zipapp  # noqa: E402

PYENV = Path("/root/.pyenv/versions")
WORKERS = [""] * 5  # five CPU workers: the example's ten experiments run in two waves


def bare_interpreters() -> Dict[str, Path]:
    """CPython 3.8..3.13 builds under pyenv, keyed by version."""
    found = {}
    for directory in PYENV.glob("*") if PYENV.is_dir() else []:
        match = re.fullmatch(r"3\.(\d+)\.(\d+)", directory.name)
        python = directory / "bin" / "python3"
        if match and 8 <= int(match.group(1)) <= 13 and python.exists():
            found[directory.name] = python
    return dict(sorted(found.items(), key=lambda item: [int(part) for part in item[0].split(".")]))


INTERPRETERS = bare_interpreters()


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zipapp.build(tmp_path_factory.mktemp("dist"))


def run(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120, **kwargs)


def stats(output: Path) -> Dict[str, Dict[str, str]]:
    """Experiment name -> {command: status}, from every `stat` file under `output`."""
    return {stat.parent.name: {k: v for k, v in yaml.safe_load(stat.read_text()).items() if not k.startswith("_")}
            for stat in output.glob("*/stat")}


# -- the archive itself -------------------------------------------------------------------------

def test_z1_build_is_reproducible(pyz: Path, tmp_path: Path) -> None:
    again = build_zipapp.build(tmp_path)
    assert again.read_bytes() == pyz.read_bytes()


def test_z1_bytes_do_not_depend_on_the_installed_pyyaml(pyz: Path, tmp_path: Path, monkeypatch) -> None:
    """Another installed PyYAML (6.0.4 gave other bytes) is not vendored: the pinned release is."""
    pinned = build_zipapp._installed_yaml()
    assert build_zipapp.content_hash(pinned) == build_zipapp.PYYAML_SOURCES, "the test machine has another PyYAML"
    other = dict(pinned, **{"yaml/__init__.py": pinned["yaml/__init__.py"] + b"# another release\n"})
    monkeypatch.setattr(build_zipapp, "_installed_yaml", lambda: other)
    monkeypatch.setattr(build_zipapp, "_downloaded_yaml", lambda: pinned)  # the pinned wheel, as pip gets it
    assert build_zipapp.build(tmp_path).read_bytes() == pyz.read_bytes()


def test_z1_without_the_pinned_pyyaml_the_build_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(build_zipapp, "_installed_yaml", lambda: {"yaml/__init__.py": b"__version__ = '9'\n"})
    monkeypatch.setattr(build_zipapp, "_downloaded_yaml", dict)  # offline: pip download failed
    with pytest.raises(SystemExit) as stopped:
        build_zipapp.build(tmp_path)
    assert f"`pip install pyyaml=={build_zipapp.PYYAML}`" in str(stopped.value)
    assert list(tmp_path.iterdir()) == []


def test_z1_archive_has_no_compiled_code(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    compiled = [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".dll")) or "__pycache__" in n]
    assert compiled == []
    assert "__main__.py" in names and "mlrunner/cli.py" in names and "yaml/__init__.py" in names
    assert all(n.startswith(("mlrunner/", "yaml/")) or n == "__main__.py" for n in names)


def test_z1_shebang_and_executable(pyz: Path) -> None:
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(pyz, os.X_OK)


def test_z1_version(pyz: Path) -> None:
    from mlrunner import __version__
    result = run([sys.executable, str(pyz), "--version"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == f"mlrunner {__version__}"


def test_z1_vendor_unpacked_once_into_cache(tmp_path: Path) -> None:
    """The --with-ssh bootstrap, with a small stand-in for the downloaded wheels."""
    vendor = {"_vendor/probe_vendor/__init__.py": b"VALUE = 1\n"}
    archive = build_zipapp.build(tmp_path / "dist", vendor, "mlrunner-ssh.pyz")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    for _ in range(2):
        result = run([sys.executable, "-I", str(archive), "--version"], env=env)
        assert result.returncode == 0, result.stdout
    entries = list((tmp_path / "cache" / "mlrunner").iterdir())
    assert [e.name for e in entries] == [build_zipapp.content_hash(vendor)]  # no leftover scratch dirs
    assert (entries[0] / "probe_vendor" / "__init__.py").read_bytes() == b"VALUE = 1\n"


# -- every bare interpreter ---------------------------------------------------------------------

def test_z1_enough_interpreters() -> None:
    if len(INTERPRETERS) >= 3:
        return
    message = f"need >= 3 CPython 3.8-3.13 builds under {PYENV}, found {sorted(INTERPRETERS) or 'none'}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


STAND_INS = {
    # fairseq-shaped scripts for examples/seed/params.yaml: each checks what the previous step left
    "train.py": """
        import sys
        args = sys.argv[1:]
        save_dir, norm = args[args.index("--save-dir") + 1], args[args.index("--normalization") + 1]
        assert args[0] == "data-bin/iwslt14" and norm in ("new", "batch"), args
        for epoch in (79, 80):
            with open(f"{save_dir}/checkpoint{epoch}.pt", "w") as checkpoint:
                checkpoint.write(norm)
        print("train", args)
    """,
    "scripts/average_checkpoints.py": """
        import sys
        args = sys.argv[1:]
        inputs, output = args[args.index("--inputs") + 1], args[args.index("--output") + 1]
        with open(f"{inputs}/checkpoint80.pt") as checkpoint, open(output, "w") as averaged:
            averaged.write(checkpoint.read())
        print("avg", args)
    """,
    "generate.py": """
        import sys
        args = sys.argv[1:]
        with open(args[args.index("--path") + 1]) as model:
            norm = model.read()
        print("BLEU4 = {}".format({"new": 35.2, "batch": 34.6}[norm]))
    """,
}

EXAMINE = """
    import re, sys
    sys.path.insert(0, sys.argv[1])
    import yaml
    from mlrunner.examine import Examiner, latest_log
    assert yaml.__file__.startswith(sys.argv[1]), yaml.__file__

    def add_bleu(output_dir, experiment, caches):
        with open(str(latest_log("test", output_dir))) as log:
            experiment.metric["bleu"] = float(re.findall(r"BLEU4 = ([\\d.]+)", log.read())[-1])

    examiner = Examiner()
    examiner.add(add_bleu)
    examiner.exam(output="output", regex=".*")
    examiner.table(print_tsv=True)
"""


class BareRun(NamedTuple):
    version: str
    example: Path
    example_result: subprocess.CompletedProcess
    seed: Path
    seed_result: subprocess.CompletedProcess
    env: Dict[str, str]


@pytest.fixture(scope="module", params=list(INTERPRETERS), ids=lambda version: f"py{version}")
def bare(request: pytest.FixtureRequest, pyz: Path, tmp_path_factory: pytest.TempPathFactory) -> BareRun:
    """The repo's example and the seed example, each run once by this interpreter from the pyz."""
    version = request.param
    base = tmp_path_factory.mktemp(f"py{version}")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(INTERPRETERS[version])
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(base), "LC_ALL": "C.UTF-8"}

    example = base / "example"
    example.mkdir()
    shutil.copy(ROOT / "params.yaml", example)
    shutil.copytree(ROOT / "examples", example / "examples")
    example_result = run(["python3", "-I", str(pyz), "-r", *WORKERS], cwd=str(example), env=env)

    seed = base / "seed"
    (seed / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "seed" / "params.yaml", seed)
    for name, source in STAND_INS.items():
        (seed / name).write_text(textwrap.dedent(source))
    seed_result = run(["python3", "-I", str(pyz), "-r", "0", "1"], cwd=str(seed), env=env)
    return BareRun(version, example, example_result, seed, seed_result, env)


def test_z1_bare_python_runs_example(bare: BareRun) -> None:
    assert bare.example_result.returncode == 0, bare.example_result.stdout
    found = stats(bare.example / "output")
    assert len(found) == 10, sorted(found)
    assert all(commands == {"train": "finished", "test": "finished"} for commands in found.values()), found


def test_z1_bare_python_runs_seed_example(bare: BareRun) -> None:
    assert bare.seed_result.returncode == 0, bare.seed_result.stdout
    found = stats(bare.seed / "output")
    assert len(found) == 5, sorted(found)  # 6 combinations, one a duplicate (SPEC X3)
    assert all(c == {"train": "finished", "avg": "finished", "test": "finished"} for c in found.values()), found
    assert all((bare.seed / "output" / name / "averaged_model.pt").exists() for name in found)


def test_z1_bare_python_examiner_from_pyz(bare: BareRun, pyz: Path) -> None:
    result = run(["python3", "-I", "-c", textwrap.dedent(EXAMINE), str(pyz)], cwd=str(bare.seed), env=bare.env)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.strip().splitlines()
    header = lines[0].split("\t")
    assert "norm" in header and "bleu" in header, lines
    assert len(lines) == 1 + 5, lines
    bleu = header.index("bleu")
    assert sorted(line.split("\t")[bleu] for line in lines[1:]) == ["34.6"] * 3 + ["35.2"] * 2, lines


# -- the installed commands (Z2) ----------------------------------------------------------------

def test_z2_python_m_mlrunner_version() -> None:
    from mlrunner import __version__
    result = run([sys.executable, "-m", "mlrunner", "--version"], cwd=str(ROOT))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == f"mlrunner {__version__}"


def test_z2_console_scripts_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the [project.scripts] table by hand
        table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert table, "pyproject.toml has no [project.scripts]"
        scripts = dict(re.findall(r'^\s*"?([\w.-]+)"?\s*=\s*"([^"]+)"', table.group(1), re.M))
    else:
        scripts = tomllib.loads(text)["project"]["scripts"]
    assert scripts.get("mlrunner") == "mlrunner.cli:main"
    assert scripts.get("run") == "mlrunner.cli:main"
