"""The fast reader of `param`/`stat` must give exactly what PyYAML gives (SPEC R5, E5)."""

from __future__ import annotations

import random
import string

import pytest
import yaml

from mlrunner.run import records

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


# --- the writer ----------------------------------------------------------------------------------

WRITER_PIECES = ["\n", "\n\n", " ", "'", "-", "--", "...", ":", "#", "a", "0", "1.5", "yes", "null", "~", "x y", "?",
                 "=", ",", "[", "{", "e", "0x", ".", "!", "&", "*", "é", "\t"]


def _writer_value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if roll < 0.55:
        return "".join(rng.choice(WRITER_PIECES) for _ in range(rng.randint(0, 6)))
    if roll < 0.65:
        return rng.choice([rng.random(), -rng.random() * 1e6, float(rng.randint(-10**17, 10**17)), 1e16, 0.0,
                           -0.0, 1e-7, round(rng.random() * 1e9, 3), float("nan"), float("-inf")])
    if roll < 0.75:
        return rng.randint(-10**20, 10**20)
    if roll < 0.85:
        return rng.choice([True, False, None])
    if depth < 2 and roll < 0.93:
        return {_writer_key(rng): _writer_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 2:
        return [{_writer_key(rng): _writer_value(rng, depth + 1)} for _ in range(rng.randint(0, 2))]
    return rng.choice(TRICKY)


def _writer_key(rng: random.Random) -> str:
    return "".join(rng.choice(WRITER_PIECES[:-2]) for _ in range(rng.randint(1, 3))) if rng.random() < 0.5 \
        else _key(rng)


def _fast_path(data, sort_keys: bool) -> bool:
    try:
        records._write_mapping(data, 0, sort_keys, [], set(), "")
        return True
    except records._Unsure:
        return False


def test_r5_fast_writer_equals_pyyaml_on_random_mappings():
    """Byte for byte PyYAML's text (the C dumper's and the pure-Python one's, as in the zipapp),
    read back by PyYAML as the same mapping; what the writer is unsure of goes to PyYAML whole."""
    rng = random.Random(15)
    fast = 0
    for _ in range(3000):
        data = {_writer_key(rng): _writer_value(rng) for _ in range(rng.randint(1, 6))}
        data["_runs"] = {"train": [{k: _writer_value(rng, 2) for k in ("host", "worker", "start", "log")}]}
        for sort_keys in (True, False):
            text = records.dumps(data, sort_keys)
            assert text == records._pyyaml_dumps(data, sort_keys), repr(text)
            if _fast_path(data, sort_keys):
                fast += 1
                assert text == records._pyyaml_dumps(data, sort_keys, yaml.SafeDumper), repr(text)
                assert yaml.safe_load(text) == data, repr(text)  # no NaN here: it goes to PyYAML
    assert fast > 1000  # the test is about the fast path, not the fallback


def test_i5_param_and_stat_as_the_runner_writes_them_never_need_pyyaml(monkeypatch):
    param = {"lr": 0.001, "seed": 3, "norm": "new", "flag": True, "opt": "yes", "data": "data/a b",
             "_name": "Lr_0.001-Seed_3", "_output": "output/Lr_0.001-Seed_3", "_time": "20261128.073859",
             "_scripts": {"train": "export CUDA_VISIBLE_DEVICES='0,1'; { python train.py --lr 0.001 --opt yes\n"
                                   "} > output/Lr_0.001-Seed_3/log.train.20261128.073859 2>&1"}}
    stat = {"train": "running", "test": "skipped", "_runs": {"train": [
        {"host": "vm", "pid": 12, "pid_start": 3456, "worker": "0,1", "start": 1795851539.695, "status": "failed",
         "log": "output/x/log.train.1", "end": 1795851540.7, "seconds": 1.005, "reason": "exit status 1"},
        {"host": "vm", "worker": "0", "start": 1795851541.0, "status": "running", "log": "output/x/log.train.2",
         "pgid": 99, "pgid_start": 4567}]}}
    expected = [records._pyyaml_dumps(param), records._pyyaml_dumps(stat, False)]
    monkeypatch.setattr(records.yaml, "dump", None)  # any fallback would fail
    assert [records.dumps(param), records.dumps(stat, False)] == expected


@pytest.mark.parametrize("data", [
    {"a": "é"}, {"a": "tab\there"}, {"a": "x" * 20000}, {"k" * 130: 1}, {"a": {}}, {"a": []}, {"a": [1, 2]},
    {"a": 1e20}, {"a": float("inf")}, {1: "int key"}, {"a": " \nb"}, {"a": "b\n c"}, {"": 1}, {"a": ("t",)},
])
def test_r5_shapes_the_writer_is_unsure_of_go_to_pyyaml(data):
    assert not _fast_path(data, True)
    assert records.dumps(data) == records._pyyaml_dumps(data)


def test_r5_an_object_written_twice_goes_to_pyyaml_which_aliases_it():
    run = {"host": "vm"}
    data = {"_runs": {"a": [run], "b": [run]}}
    assert not _fast_path(data, False)
    assert records.dumps(data, False) == records._pyyaml_dumps(data, False)
