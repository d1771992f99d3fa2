"""The fast reader of `param`/`stat` must give exactly what PyYAML gives (SPEC R5, E5)."""

from __future__ import annotations

import random
import string

import pytest
import yaml

from mlrunner import records

TRICKY = ["yes", "no", "on", "null", "~", "1_000", "0x1f", "1:20", "2026-11-28", "0o17", ".5", "+1", "-",
          "- a", "a b", "a: b", "a #b", "'q'", '"d"', "x\ny", "\t", "", " lead", "trail ", "[1]", "{a: 1}",
          "CUDA_VISIBLE_DEVICES=0 python x.py --lr 0.1 > out/log 2>&1", "é ü", "*ref", "&a", "!tag"]


def _value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if roll < 0.15:
        return rng.randint(-10**6, 10**6)
    if roll < 0.25:
        return rng.choice([0.1, 1e-5, -2.5, float("inf"), 3.0, 1e20])
    if roll < 0.32:
        return rng.choice([True, False, None])
    if roll < 0.42 and depth < 3:
        return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if roll < 0.47:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.7:
        return rng.choice(TRICKY)
    alphabet = string.ascii_letters + string.digits + " :#'\"-_./$()&*!|>%@`,?[]{}\n\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))


def _key(rng: random.Random):
    return rng.choice(["lr", "seed", "early-stop", "_scripts", "_runs", "yes", "1", "a b", "x.y", "-a", "on",
                       f"k{rng.randint(0, 50)}"])


def test_r5_fast_reader_equals_pyyaml_on_random_mappings():
    rng = random.Random(2026)
    for _ in range(3000):
        data = {_key(rng): _value(rng) for _ in range(rng.randint(0, 8))}
        for sort_keys in (True, False):
            text = records.dumps(data, sort_keys)
            assert repr(records.loads(text)) == repr(yaml.safe_load(text)), text


def _stat_like(rng: random.Random) -> dict:
    """A `stat` as the runner writes it: statuses, then `_runs` with a list of runs per command."""
    commands = rng.sample(["train", "test", "avg", "yes", "1"], rng.randint(1, 3))
    stat = {c: rng.choice(["finished", "failed", "running", "interrupted"]) for c in commands}
    stat["_runs"] = {c: [{k: _value(rng, 3) for k in rng.sample(["worker", "host", "start", "end", "status", "log",
                                                                  "reason", "pid", "pgid"], rng.randint(0, 6))}
                         for _ in range(rng.randint(0, 3))] for c in commands}
    return stat


def test_i6_fast_reader_equals_pyyaml_on_multi_line_shell_lines():
    """A recorded shell line holds a line break (I6): PyYAML folds it into a multi-line scalar."""
    rng = random.Random(5)
    pieces = ["export X=0; { cmd", "\n", "\n\n", "} > 'log' 2>&1", "a''b", " ", "it's", "x" * 80, "é", "#", ":"]
    for _ in range(3000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        text = records.dumps({"_scripts": {"train": value}, "lr": 0.1}, sort_keys=False)
        assert records.loads(text) == yaml.safe_load(text), text
    text = records.dumps({"_scripts": {"t": "export CUDA_VISIBLE_DEVICES=0; { python t.py\n} > out/log 2>&1"}})
    assert records._fast(text) == yaml.safe_load(text)  # read without PyYAML


def test_v2_fast_reader_equals_pyyaml_on_stat_files_with_run_lists():
    rng = random.Random(11)
    for _ in range(2000):
        text = records.dumps(_stat_like(rng), sort_keys=False)
        assert repr(records.loads(text)) == repr(yaml.safe_load(text)), text


@pytest.mark.parametrize("text", [
    "a:\n- x: 1\n  y: 2\n- x: 3\nb: 4\n", "a:\n  - x: 1\n    y:\n      z: 2\n", "a:\n- x: 1\n- 2\n",
    "a:\n- x: 1\n y: 2\n", "- x: 1\n", "a:\n  b:\n  - x: 1\n  c: 2\n", "a:\n- x:\n  - y: 1\n",
    "", "# only a comment\n", "a: 1\nb:\n", "a:\n  b: 1\n c: 2\n", "a: [1, 2]\n", "- 1\n- 2\n",
    "a: 'it''s'\n", "a: 'open\n  quote'\n", "a: b # comment\n", "---\na: 1\n", "a: 1\na: 2\n",
    "x:\n  y:\n    z: 1\n  w: 2\nv: ~\n", "a: |\n  text\n",
])
def test_r5_fast_reader_equals_pyyaml_on_hand_written_yaml(text):
    def outcome(load):
        try:
            return repr(load(text))
        except yaml.YAMLError as error:
            return type(error).__name__
    assert outcome(records.loads) == outcome(yaml.safe_load)


def test_r5_a_corrupt_file_raises_the_yaml_error():
    with pytest.raises(yaml.YAMLError):
        records.loads("norm: [new\nmoment: 0.1\n")
