"""Host settings from `--hosts` and `hosts:` (SPEC H1, H5), as pure functions, and their errors."""

from __future__ import annotations

import pytest

from mlrunner.plan import hosts
from mlrunner.errors import UserError
from runlib import run, write


@pytest.mark.parametrize("text, expected", [
    ("gpu1", [("gpu1", None, None)]),
    ("gpu1,alice@gpu2:2222", [("gpu1", None, None), ("gpu2", "alice", 2222)]),
    (" gpu1 , 10.0.0.5:22 ,", [("gpu1", None, None), ("10.0.0.5", None, 22)]),
])
def test_h1_hosts_flag(text, expected):
    assert [(s.name, s.user, s.port) for s in hosts.parse_flag(text)] == expected


@pytest.mark.parametrize("text", ["gpu1 gpu2", "a@@b", "gpu1:port", "@gpu1"])
def test_h1_bad_hosts_flag(text):
    with pytest.raises(UserError, match="is not a host"):
        hosts.parse_flag(text)


def test_h1_hosts_config_and_flag_merge():
    configured = hosts.parse_config({"gpu1": {"resource": [0, 1], "workdir": "~/proj"}, "bob@gpu2:2200": None},
                                    "params.yaml")
    assert [(s.name, s.user, s.port, s.resources, s.workdir) for s in configured] == [
        ("gpu1", None, None, ["0", "1"], "~/proj"), ("gpu2", "bob", 2200, None, None)]
    chosen = hosts.select("alice@gpu1", configured, hosts.SyncSettings(exclude=["*.pt"]))
    assert [(s.name, s.user, s.resources, s.workdir, s.exclude) for s in chosen] == [
        ("gpu1", "alice", ["0", "1"], "~/proj", ["*.pt"])]
    assert [s.name for s in hosts.select(None, configured, hosts.SyncSettings())] == ["gpu1", "gpu2"]


@pytest.mark.parametrize("raw, message", [
    ({"gpu1": {"resources": [0]}}, "unknown key 'resources'"),
    ({"gpu1": {"resource": 0}}, "'resource' must be a list"),
    ({"gpu1": {"workdir": 3}}, "'workdir' must be a path"),
    ({"gpu1": [0, 1]}, "must map to settings"),
])
def test_h1_bad_hosts_config(raw, message):
    with pytest.raises(UserError, match=message):
        hosts.parse_config(raw, "params.yaml")


@pytest.mark.parametrize("raw, message", [
    ({"exclude": "*.pt"}, "must be a list of globs"),
    ({"include": ["*.log"]}, "unknown key 'include'"),
])
def test_h5_bad_sync_config(raw, message):
    with pytest.raises(UserError, match=message):
        hosts.parse_sync(raw, "params.yaml")


@pytest.mark.parametrize("cwd, home, expected", [
    ("/home/al/proj/x", "/home/al", "proj/x"),
    ("/data/proj", "/home/al", "/data/proj"),
    ("/home/al", "/home/al", "."),
])
def test_h1_default_workdir(cwd, home, expected):
    assert hosts.default_workdir(cwd, home) == expected


def test_c10_bad_hosts_setting_is_one_line_before_anything_starts(tmp_path):
    write(tmp_path, "template: {a: echo hi}\nhosts: {gpu1: {resource: 0}}\n")
    code, out, err = run(["--dry-run"], tmp_path)
    assert code == 2 and err.startswith("params.yaml: hosts: 'gpu1': 'resource' must be a list")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "output").exists()


def test_h1_empty_resource_list_means_hosts_only_and_only_beside_hosts(tmp_path):
    from mlrunner.plan import config
    write(tmp_path, "template: {a: echo hi}\nresource: []\nhosts: {gpu1: {}}\n")
    assert config.load(str(tmp_path / "params.yaml")).resources == []
    write(tmp_path, "template: {a: echo hi}\nresource: []\n")
    with pytest.raises(UserError, match=r"'resource' needs at least one entry \(an empty list only beside 'hosts:'\)"):
        config.load(str(tmp_path / "params.yaml"))
