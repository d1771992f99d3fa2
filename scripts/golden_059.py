"""Record what mlrunner 0.5.9 (the PyPI package) printed, so the compatibility tests run without it.

Run by hand, once, with this checkout's python and a scratch venv that holds 0.5.9:

    python3 -m venv /tmp/scratch059 && /tmp/scratch059/bin/pip install mlrunner==0.5.9
    python3 scripts/golden_059.py /tmp/scratch059/bin/python

It writes tests/data/mlrunner-0.5.9/: `names.json` (0.5.9's `spec2name` for the specs that
tests/test_sweep.py checks), `examine.tsv` (0.5.9's Examiner TSV over the tree that
tests/test_examine.py builds) and a README.md saying how and when they were made.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "mlrunner-0.5.9"
VERSION = "0.5.9"

# Specs whose values are paths name files under a scratch root; "{root}" stands for that root in
# names.json, and relative paths are resolved from it, so a test can rebuild the same layout.
ROOT = "{root}"
LONG_DIR = "d" * 120
LAYOUT = {"dirs": ["data-bin/iwslt14", LONG_DIR], "files": ["data-bin/vocab.txt"]}
SPECS: List[Dict[str, Any]] = [
    {"norm": "new", "moment": 0.1},
    {"norm": "batch", "early-stop": True},
    {"norm": "batch", "early-stop": False},
    {"max_tokens": 4096, "lr": 1e-05, "warmup": 0.0001},
    {"lr": 2.5, "big": 123456789, "neg": -3, "one": 1.0, "zero": 0, "huge": 1e20},
    {"lr_min": 1, "a-b-c": 2, "learning_rate_max": 3, "x": 4, "ab_cd": 5, "EARLY-stop": 6, "a--b": 7},
    {"path": "./data/x", "abs": "/abs/dir/", "rel": "a/b/c", "dots": "...x", "empty": ""},
    {"long": "x" * 150, "mixed": "a" * 50 + "b" * 60},
    {"uni": "größe", "space": "a b", "hostile": "$(touch pwned); rm -rf x"},
    {"up": "../../nowhere-mlrunner-test", "dotdot": "..", "dot": "."},
    {"learning-rate": 0.001, "data": "data-bin/iwslt14", "seed": 3, "max-tokens_per_gpu": 1},
    {"data": ROOT + "/data-bin/iwslt14", "file": ROOT + "/data-bin"},
    {"vocab": ROOT + "/data-bin/vocab.txt", "rel": "data-bin/vocab.txt", "missing": "data-bin/absent"},
    {"long-path": ROOT + "/" + LONG_DIR, "long-rel": LONG_DIR + "/"},
]

NAMES_PROGRAM = """\
import json, sys
from mlrunner.utils.misc import spec2name
print(json.dumps([spec2name(spec, str_maxlen=100) for spec in json.load(sys.stdin)]))
"""


def run_old(old_python: str, args: List[str], cwd: Path, stdin: str = "") -> str:
    """Run 0.5.9's python isolated (-I: no PYTHONPATH, no cwd on sys.path), so it cannot see this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([old_python, "-I", *args], input=stdin, capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
    if done.returncode != 0:
        sys.exit(f"golden_059: {old_python} {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def with_root(spec: Dict[str, Any], root: Path) -> Dict[str, Any]:
    return {k: v.replace(ROOT, str(root)) if isinstance(v, str) else v for k, v in spec.items()}


def old_names(old_python: str, scratch: Path) -> dict:
    """0.5.9's name of each spec, computed in a root that holds LAYOUT."""
    root = scratch / "names"
    for directory in LAYOUT["dirs"]:
        (root / directory).mkdir(parents=True)
    for file in LAYOUT["files"]:
        (root / file).write_text("")
    specs = [with_root(spec, root) for spec in SPECS]
    names = json.loads(run_old(old_python, ["-c", NAMES_PROGRAM], root, json.dumps(specs)))
    leaked = [name for name in names if str(root).strip("/").replace("/", "_") in name or str(root) in name]
    if leaked:
        sys.exit(f"golden_059: names depend on the scratch path, so no test could match them: {leaked}")
    return {"layout": LAYOUT, "cases": [{"spec": spec, "name": name} for spec, name in zip(SPECS, names)]}


def old_examine_tsv(old_python: str, scratch: Path) -> str:
    """0.5.9's TSV over test_examine's seed tree; rows sorted, as 0.5.9 lists directories in file-system order."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's mlrunner, as the tests import it
    import test_examine  # the same tree builder and BLEU parser as the test, so the two cannot drift

    output = test_examine.build_seed_output(scratch / "examine" / "output")
    script = scratch / "examine" / "old_examine.py"
    script.write_text("import re\nfrom mlrunner.examine import Examiner, latest_log\n\n\n"
                      + inspect.getsource(test_examine.parse_bleu) + "\n\n"
                      + inspect.getsource(test_examine.add_bleu) + "\n\n"
                      + f"examiner = Examiner()\nexaminer.add(add_bleu)\nexaminer.exam({str(output)!r})\n"
                      + "examiner.table(print_tsv=True)\n")
    header, *rows = run_old(old_python, [str(script)], script.parent).splitlines()
    if str(scratch) in "\n".join(rows) or len(rows) != len(test_examine.SEED):
        sys.exit(f"golden_059: unexpected 0.5.9 TSV:\n{header}\n" + "\n".join(rows))
    return "\n".join([header, *sorted(rows)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_python", help="python of a venv with mlrunner==0.5.9 installed")
    args = parser.parse_args()
    if not os.access(args.old_python, os.X_OK):
        parser.error(f"{args.old_python}: no such program (make the 0.5.9 venv first, see --help)")
    probe = "import importlib.metadata as m, sys; print(m.version('mlrunner'), sys.version.split()[0])"
    version, old_python_version = run_old(args.old_python, ["-c", probe], REPO).split()
    if version != VERSION:
        sys.exit(f"golden_059: {args.old_python} has mlrunner {version}, not {VERSION}")

    with tempfile.TemporaryDirectory(prefix="golden059-") as scratch:
        names = old_names(args.old_python, Path(scratch))
        tsv = old_examine_tsv(args.old_python, Path(scratch))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / "names.json").write_text(json.dumps(names, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (GOLDEN / "examine.tsv").write_text(tsv, encoding="utf-8")
    today = datetime.date.today().isoformat()
    (GOLDEN / "README.md").write_text(
        f"# What mlrunner {VERSION} printed\n\n"
        f"Made on {today} by `python3 scripts/golden_059.py {args.old_python}`, that python being a venv with\n"
        f"mlrunner {version} from PyPI (`pip install mlrunner=={VERSION}`, Python {old_python_version}).\n"
        "Regenerate them the same way when the specs or the seed tree in the tests change.\n\n"
        "- `names.json`: `spec2name(spec, str_maxlen=100)` for each spec, run in a scratch root holding\n"
        "  `layout`; `{root}` in a value stands for that root, relative paths are resolved from it.\n"
        "- `examine.tsv`: `Examiner().table(print_tsv=True)` with tests/test_examine.py's `add_bleu` over\n"
        "  the tree its `build_seed_output` writes; rows sorted, since 0.5.9 lists directories in\n"
        "  file-system order.\n", encoding="utf-8")
    print(f"golden_059: wrote {len(names['cases'])} names and {tsv.count(chr(10)) - 1} TSV rows to {GOLDEN}")


if __name__ == "__main__":
    main()
