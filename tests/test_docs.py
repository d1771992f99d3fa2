"""The documentation tells the truth: the README's tutorial runs as shown, every relative link of
README.md, CHANGELOG.md and docs/*.md reaches a file (and a heading, for `#anchor`s), the Quick
start's commands exist, docs/performance.md shows the benchmark results as saved, and the module
map of docs/design.md names modules that exist.

The tutorial runs in a temporary copy of the repository's params.yaml and examples/, each command
under bash with `mlrunner` a script that runs `python3 -m mlrunner` with this checkout on
PYTHONPATH. The Quick start's own lines (`pip install . && mlrunner`, `scripts/test.sh`) are not
run here: installing into the test's interpreter, or running the suite from inside itself, is not
a test; their targets are checked instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
sys.path.insert(0, str(REPO / "benchmarks"))
import run_all  # noqa: E402  (benchmarks/ is not a package)

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
DURATION = re.compile(r"\(\d+\.\ds\)")
INVOKED = re.compile(r"\S*python[\d.]* -m mlrunner")


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def tutorial_steps() -> List[Tuple[List[Tuple[str, int]], List[str]]]:
    """(commands with their expected exit status, the output lines shown after them), in order."""
    steps: List[Tuple[List[Tuple[str, int]], List[str]]] = []
    for lang, body in FENCE.findall(section(README.read_text(encoding="utf-8"), "A five-minute tutorial")):
        if lang == "sh":
            commands = []
            for line in body.splitlines():
                command, _, comment = line.partition("  #")
                status = re.search(r"exit status (\d+)", comment)
                commands.append((command.strip(), int(status.group(1)) if status else 0))
            steps.append((commands, []))
        elif lang == "text":
            steps[-1][1].extend(line for line in body.splitlines() if line.strip() not in ("", "…"))
    return steps


def normal(line: str) -> str:
    """A line as compared: the way mlrunner was started, durations and spacing do not matter."""
    return " ".join(DURATION.sub("(…s)", INVOKED.sub("mlrunner", line)).split())


def test_tutorial_runs_as_shown(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "mlrunner"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mlrunner \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    steps = tutorial_steps()
    assert len(steps) >= 6, "the tutorial lost its runnable blocks"
    ran = [command for commands, _ in steps for command, _ in commands]
    for wanted in ("mlrunner", "mlrunner --status", "mlrunner --rerun-changed", "mlrunner --examine",
                   "mlrunner --report"):
        assert wanted in ran
    for commands, shown in steps:
        output: List[str] = []
        for command, status in commands:
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=120)
            assert done.returncode == status, f"{command}: exit {done.returncode}\n{done.stdout}"
            output.extend(normal(line) for line in done.stdout.splitlines())
        missing = [line for line in shown if normal(line) not in output]
        assert not missing, f"{[c for c, _ in commands]} did not print {missing}:\n" + "\n".join(output)
    assert (tmp_path / "output" / "report.html").is_file()


def anchors(path: Path) -> Set[str]:
    """GitHub's anchors for the headings of a Markdown file (outside code blocks)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", [README, REPO / "CHANGELOG.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    cache: Dict[Path, Set[str]] = {}
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in cache.setdefault(resolved, anchors(resolved))):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_quick_start_commands_exist_and_ci_runs_the_test_script() -> None:
    quick = section(README.read_text(encoding="utf-8"), "Quick start")
    assert "pip install . && mlrunner" in quick and "scripts/test.sh" in quick
    assert os.access(REPO / "scripts" / "test.sh", os.X_OK)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec bash scripts/test\.sh", ci, re.M), ".ci/run no longer runs scripts/test.sh"


def test_readme_stays_short_and_user_docs_tell_no_history() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 210
    history = re.compile(r"\b(issue \d+|issues? of|rounds?|before the hardening)\b", re.I)
    for page in [README, *DOCS]:
        hits = history.findall(FENCE.sub("", page.read_text(encoding="utf-8")))
        assert not hits, f"{page.name} speaks of history: {hits} (history belongs in CHANGELOG.md)"


def test_performance_page_shows_the_saved_results_verbatim() -> None:
    doc = run_all.DOC.read_text(encoding="utf-8")
    assert run_all.render(doc, run_all.results()) == doc, "run benchmarks/run_all.py --render"
    marked = set(re.findall(r"<!-- results: ([\w-]+) -->", doc))
    assert marked == set(run_all.SCRIPTS), "each benchmark script has its block in docs/performance.md"
    assert set(run_all.SCRIPTS) == {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"_common", "run_all"}


def test_render_puts_a_results_file_between_its_markers_and_says_when_none() -> None:
    doc = "a\n<!-- results: x -->\nold\n<!-- /results: x -->\n<!-- results: y -->\n<!-- /results: y -->\n"
    rendered = run_all.render(doc, {"x": "# header\nfigure 1.0 s\n"})
    assert "<!-- results: x -->\n```\n# header\nfigure 1.0 s\n```\n<!-- /results: x -->" in rendered
    assert f"<!-- results: y -->\n{run_all.NOT_MEASURED}\n<!-- /results: y -->" in rendered
    assert run_all.render(rendered, {"x": "# header\nfigure 1.0 s\n"}) == rendered


def test_design_module_map_names_modules_that_exist() -> None:
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    start, end = design.index("<!-- BEGIN MODULE MAP"), design.index("<!-- END MODULE MAP -->")
    names = re.findall(r"`([\w/]+(?:\.py|/))`", design[start:end])
    assert len(names) > 20
    missing = [name for name in names if not (REPO / "mlrunner" / name).exists()]
    assert not missing, f"docs/design.md's module map names modules that are gone: {missing}"
    package = REPO / "mlrunner"
    tops = {p.name for p in package.glob("*.py")} | {f"{p.name}/" for p in package.iterdir()
                                                      if p.is_dir() and (p / "__init__.py").exists()}
    unmapped = tops - {"__init__.py"} - {name.split("/")[0] + "/" if "/" in name else name for name in names}
    assert not unmapped, f"docs/design.md's module map leaves out {sorted(unmapped)}"
