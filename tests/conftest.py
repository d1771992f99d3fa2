"""Shared fixtures for the front-half tests: write a params.yaml, load it, run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from mlrunner.plan import config as config_module
from mlrunner.errors import UserError
from mlrunner.plan.sweep import Plan, expand

REPO = Path(__file__).resolve().parent.parent
SEED_YAML = REPO / "examples" / "seed" / "params.yaml"


def write_yaml_file(directory: Path, text: str, name: str = "params.yaml") -> Path:
    """Write `text` (dedented, so tests can indent it) as `directory/name`."""
    path = Path(directory) / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run_mlrunner(args: Sequence[str], cwd: Path, timeout: float = 60) -> Tuple[int, str, str]:
    """Run the real command `python3 -m mlrunner ARGS` in `cwd`; return (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CUDA_DEVICE_ORDER", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # one inherited from a GPU job would renumber `resource` (G11)
    done = subprocess.run([sys.executable, "-m", "mlrunner", *map(str, args)], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def load_text(directory: Path, text: str, name: str = "params.yaml") -> config_module.Config:
    return config_module.load(str(write_yaml_file(directory, text, name)))


def plan_text(directory: Path, text: str, title: Optional[str] = None, output: str = "output",
              **options) -> Plan:
    """Load `text` and expand it, as the CLI does, into the task pool."""
    config = load_text(directory, text)
    return expand(config, config_module.select_sweeps(config, title), output, **options)


def user_error(call: Callable[[], object]) -> UserError:
    with pytest.raises(UserError) as caught:
        call()
    return caught.value


def tree(directory: Path) -> List[str]:
    """Every path under `directory`, to show that a command wrote nothing."""
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*"))


@pytest.fixture
def write_yaml() -> Callable[..., Path]:
    """`write_yaml(tmp_path, text, name="params.yaml") -> Path`."""
    return write_yaml_file


@pytest.fixture
def run_cli() -> Callable[..., Tuple[int, str, str]]:
    """`run_cli(args, cwd) -> (rc, stdout, stderr)` of the real `python3 -m mlrunner`."""
    return run_mlrunner


@pytest.fixture
def load_config(tmp_path: Path) -> Callable[[str], config_module.Config]:
    """`load_config(text) -> Config`, the text written to tmp_path/params.yaml."""
    return lambda text: load_text(tmp_path, text)


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[..., Plan]:
    """`make_plan(text, title=None, output="output", **expand_options) -> Plan`."""
    return lambda text, **options: plan_text(tmp_path, text, **options)


@pytest.fixture
def config_error(tmp_path: Path) -> Callable[..., UserError]:
    """`config_error(text, title=None, commands=None) -> UserError` from loading and expanding."""
    return lambda text, **options: user_error(lambda: plan_text(tmp_path, text, **options))
