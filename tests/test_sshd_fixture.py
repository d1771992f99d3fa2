"""The SSH test servers of tests/sshd.py work: real OpenSSH client, paramiko, separate hosts,
kill/restart on the same port, and host keys that are really checked."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import sshd


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    sshd.require_sshd()
    started = sshd.start_servers(2, tmp_path_factory)
    yield started
    sshd.stop_servers(started)


@pytest.fixture
def server(tmp_path):
    """A server of its own, for the tests that kill it or change its key."""
    sshd.require_sshd()
    with sshd.SshServer(tmp_path / "srv", "host1") as started:
        yield started


def paramiko_client(server, known_hosts):
    paramiko = pytest.importorskip("paramiko")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(server.host, port=server.port, username=server.user, key_filename=str(server.client_key),
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def run(client, command):
    _, out, err = client.exec_command(command, timeout=10)
    return out.channel.recv_exit_status(), out.read().decode(), err.read().decode()


def start_sleeper(client) -> int:
    """Start a detached `sleep 60` through the server, as a remote experiment would be (its own
    session, output to a file); return its pid once it is the sleep (not mid-exec)."""
    status, out, _ = run(client, "setsid nohup sleep 60 > /dev/null 2>&1 < /dev/null & pid=$!; "
                                 "while [ \"$(cat /proc/$pid/comm)\" != sleep ]; do sleep 0.01; done; echo $pid")
    assert status == 0
    return int(out)


def test_openssh_client_runs_commands_with_the_stand_in_nvidia_smi(servers):
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    host1 = servers[0]
    done = host1.ssh("echo ok; echo $PATH; nvidia-smi -L")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ok"
    assert str(host1.bin_dir) in lines[1].split(":")
    assert lines[2:] == [f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08x}-1f0d-4e57-9d2a-{i:012x})"
                         for i in range(2)]


def test_paramiko_exec_and_sftp_with_checked_host_key(servers):
    host1 = servers[0]
    (host1.workdir / "marker.txt").write_text("x")
    client = paramiko_client(host1, host1.known_hosts)
    try:
        assert run(client, "echo ok; echo $HOME; pwd") == (0, f"ok\n{host1.home}\n{host1.home}\n", "")
        assert run(client, "nvidia-smi -L | wc -l")[1].strip() == "2"
        sftp = client.open_sftp()
        assert "marker.txt" in sftp.listdir(str(host1.workdir))
        assert sftp.normalize(".") == str(host1.home)
    finally:
        client.close()


def test_hosts_have_separate_trees(servers):
    host1, host2 = servers
    assert host1.workdir != host2.workdir and host1.home != host2.home and host1.port != host2.port
    assert host1.ssh("echo one > ~/f && touch $HOME/../work/only1").returncode == 0
    assert host2.ssh("cat ~/f 2>/dev/null; ls $HOME/../work").stdout == ""
    assert (host1.home / "f").read_text() == "one\n" and (host1.workdir / "only1").exists()


def test_gpus_and_env_are_per_server(tmp_path):
    sshd.require_sshd()
    with sshd.SshServer(tmp_path / "srv", "host9", gpus=3, env={"EXTRA": "yes"}) as host9:
        done = host9.ssh("nvidia-smi -L | wc -l; echo $EXTRA")
        assert done.stdout.split() == ["3", "yes"], done.stderr


def test_kill_refuses_connections_and_restart_comes_back_on_the_same_port(server):
    paramiko = pytest.importorskip("paramiko")
    client = server.paramiko_client()
    transport = client.get_transport()
    port = server.port
    try:
        assert run(client, "true")[0] == 0
        server.kill()
        assert not server.running
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):  # the connection died with the host
            run(client, "true")
        with pytest.raises(OSError):
            server.paramiko_client(timeout=3)
        server.restart()
        assert server.running and server.port == port
        again = server.paramiko_client()
        assert run(again, "echo back") == (0, "back\n", "")
        again.close()
    finally:
        client.close()
    assert not transport.is_active()


def test_kill_ends_the_commands_started_through_the_server(server):
    pytest.importorskip("paramiko")
    client = server.paramiko_client()
    pid = start_sleeper(client)
    assert pid in sshd._marked(str(server.root))
    server.kill()
    client.close()
    for _ in range(100):
        if pid not in sshd._marked(str(server.root)):
            break
        subprocess.run(["sleep", "0.02"])
    assert pid not in sshd._marked(str(server.root))


def test_drop_connections_breaks_them_but_the_host_stays(server):
    paramiko = pytest.importorskip("paramiko")
    client = server.paramiko_client()
    pid = start_sleeper(client)
    server.drop_connections()
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        for _ in range(50):  # the client may need a moment to see the connection gone
            run(client, "true")
            subprocess.run(["sleep", "0.02"])
    client.close()
    assert server.running and pid in sshd._marked(str(server.root))
    again = server.paramiko_client()
    assert run(again, "echo still") == (0, "still\n", "")
    again.close()


def test_unknown_and_changed_host_keys_are_refused(servers, tmp_path):
    paramiko = pytest.importorskip("paramiko")
    host1, host2 = servers
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        paramiko_client(host1, empty)
    wrong = tmp_path / "wrong_known_hosts"  # host1's address with host2's key: a changed key
    wrong.write_text(f"[{host1.host}]:{host1.port} {host2.public_host_key()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        paramiko_client(host1, wrong)
    if shutil.which("ssh"):
        done = subprocess.run(["ssh", "-F", str(host1.ssh_config), "-o", f"UserKnownHostsFile={empty}",
                               host1.alias, "true"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=20)
        assert done.returncode == 255 and "Host key verification failed" in done.stderr


def test_make_home_gives_paramiko_a_working_home(servers, tmp_path, monkeypatch):
    paramiko = pytest.importorskip("paramiko")
    home = sshd.make_home(tmp_path, servers)
    ssh_dir = home / ".ssh"
    assert (ssh_dir / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (ssh_dir / "known_hosts").read_text().splitlines() == [s.known_hosts_line() for s in servers]
    monkeypatch.setenv("HOME", str(home))
    config = paramiko.SSHConfig.from_path(str(ssh_dir / "config"))
    for server in servers:
        entry = config.lookup(server.alias)
        assert (entry["hostname"], int(entry["port"]), entry["user"]) == (server.host, server.port, server.user)
        client = paramiko.SSHClient()
        client.load_host_keys(str(ssh_dir / "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(entry["hostname"], port=int(entry["port"]), username=entry["user"],
                       key_filename=[str(p).replace("~", str(home), 1) for p in entry["identityfile"]],
                       allow_agent=False, look_for_keys=False, timeout=10)
        assert run(client, "echo $HOME")[1].strip() == str(server.home)
        client.close()
    untrusted = sshd.make_home(tmp_path, servers, trust=False, name="untrusted")
    assert (untrusted / ".ssh" / "known_hosts").read_text() == ""


def test_require_sshd_fails_under_ci_when_sshd_is_missing(monkeypatch):
    monkeypatch.setattr(sshd, "sshd_available", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="openssh-server"):
        sshd.require_sshd()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        sshd.require_sshd()
