#!/usr/bin/env python3
"""Run the benchmark scripts, keep what each printed, and put it into docs/performance.md.

Figures in the documentation come from here and nowhere else: each script's stdout is saved, with
the date, the machine (cores, CPU, Python, kernel), how busy other work kept the cores just before
and the command line, as benchmarks/results/<name>.txt, and `--render` copies every results file verbatim into
docs/performance.md between its markers

    <!-- results: name -->
    ...
    <!-- /results: name -->

A script with no results file gets the line "Not measured in this results set." there.

    python3 benchmarks/run_all.py                      # every script, in SCRIPTS order (no rendering)
    python3 benchmarks/run_all.py startup examine      # these only
    python3 benchmarks/run_all.py large -- --tasks 20000   # arguments after -- go to each script
    python3 benchmarks/run_all.py --skip slurm "needs the test cluster"   # record why not
    python3 benchmarks/run_all.py --render             # rewrite docs/performance.md
    python3 benchmarks/run_all.py --check              # exit 1 when docs/performance.md is stale

Standard library only.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_cores  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "performance.md"

# Every benchmark script, fastest first; `run_all.py` with no names runs them in this order.
SCRIPTS = ["startup", "early_stop", "packing_sim", "expand", "memory", "follow", "report", "dispatch",
           "examine", "packing", "snapshot", "remote", "slurm", "large", "signals"]
NOT_MEASURED = "Not measured in this results set."
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n).*?(<!-- /results: (?P=name) -->)", re.S)


def machine() -> str:
    """One line on where the figures were taken: they mean little without it."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def run(name: str, extra: List[str]) -> int:
    """Run one script, save its stdout with a header; the exit status goes into the file too."""
    script = HERE / f"{name}.py"
    busy = busy_cores(1.0)
    argv = [sys.executable, str(script.relative_to(ROOT)), *extra]
    started = time.time()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    header = [f"# benchmarks/{name}.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))},"
              f" {time.time() - started:.0f} s",
              f"# machine: {machine()}",
              f"# other work on the cores just before: {'unknown' if busy is None else f'{busy:.1f}'} busy",
              f"# command: {shlex.join(['python3', *argv[1:]])}"]
    body = done.stdout.rstrip("\n")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.rstrip("\n").splitlines()[-10:])
        body += f"\n# exit status {done.returncode}; the last lines of its stderr:\n{tail}"
    write(name, "\n".join(header) + "\n" + body + "\n")
    print(f"{name}: exit {done.returncode}, {time.time() - started:.0f} s -> {RESULTS / name}.txt")
    return done.returncode


def skip(name: str, reason: str) -> None:
    write(name, f"# benchmarks/{name}.py, {time.strftime('%Y-%m-%d', time.gmtime())}\n"
                f"{NOT_MEASURED} {reason}\n")


def write(name: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    temporary = RESULTS / f".{name}.txt.tmp"
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(RESULTS / f"{name}.txt")


def results() -> Dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(RESULTS.glob("*.txt"))}


def render(doc: str, saved: Dict[str, str]) -> str:
    """The document with each marked block replaced by its results file, verbatim, in a code block."""
    def block(match: "re.Match[str]") -> str:
        text = saved.get(match["name"])
        inner = f"```\n{text.rstrip()}\n```\n" if text is not None else f"{NOT_MEASURED}\n"
        return match.group(1) + inner + match.group(3)
    return BLOCK.sub(block, doc)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"scripts to run (default: all of {', '.join(SCRIPTS)})")
    parser.add_argument("--render", action="store_true", help="rewrite docs/performance.md from the results")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/performance.md is not rendered")
    parser.add_argument("--skip", nargs=2, metavar=("NAME", "REASON"), help="record why NAME was not run")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names + ([args.skip[0]] if args.skip else []) if name not in SCRIPTS]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)} (known: {', '.join(SCRIPTS)})")
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if args.check:
        stale = render(doc, results()) != doc
        if stale:
            print("docs/performance.md differs from benchmarks/results: run benchmarks/run_all.py --render")
        return int(stale)
    if args.render:
        DOC.write_text(render(doc, results()), encoding="utf-8")
        return 0
    if args.skip:
        skip(*args.skip)
        return 0
    failed = [name for name in args.names or SCRIPTS if run(name, extra) != 0]
    if failed:
        print(f"failed: {', '.join(failed)} (their results files say so)")
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
