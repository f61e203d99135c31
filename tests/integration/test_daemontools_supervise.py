"""supervise details: double-forking daemons, process groups, the init /
alert / shutdown / wait hooks, state in RUNDIR, svc -w/-W/-T."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from test_daemontools_svscan import (
    INDIMAIL,
    Tree,
    alive,
    make_service,
    status,
    sv_env,
    svc_run,
    tree,  # noqa: F401  (fixture)
    wait_for,
)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def pids_of(command: str) -> set[int]:
    """Live processes whose command line is exactly ``command`` (each test
    uses a sleep duration no other test uses)."""
    found = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    return {pid for pid in found if cmdline(pid) == command and alive(pid)}


def kill_all(command: str) -> None:
    for pid in pids_of(command):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def sleepers():
    """Sleep command lines used by a test; survivors are killed at the end."""
    used: list[str] = []
    yield used
    for command in used:
        kill_all(command)


def wait_pid_change(d: Path, old: int, timeout: float = 10.0) -> int:
    res = wait_for(lambda: status(d)[1] not in (0, old) and status(d)[1], timeout)
    return int(res or 0)


# --- 1. daemons that double-fork, process groups -------------------------------


def test_sticky_run_monitors_double_forking_daemon(tree: Tree, sleepers):  # noqa: F811
    daemon = "sleep 1002.5"
    sleepers.append(daemon)
    # run forks a subshell that puts the daemon in the background and exits,
    # then run itself exits: the daemon's parent is gone twice over
    d = make_service(tree.scandir, "df", f"( {daemon} & )\nexit 0")
    os.chmod(d / "run", 0o1755)  # sticky: own process group + subreaper
    tree.start()
    pid = wait_for(lambda: next(iter(pids_of(daemon)), 0))
    assert pid
    assert wait_for(lambda: status(d)[1] == pid), status(d)
    time.sleep(2.5)  # not restarted: still one daemon, still up, same pid
    assert pids_of(daemon) == {pid}
    assert status(d)[:2] == (True, pid)
    res = svc_run("svstat", str(d))
    assert res.returncode == 0 and f"  pid {pid} " in res.stdout.decode(), res.stdout
    # svc -t reaches the daemon (through the process group): restarted
    assert svc_run("svc", "-t", str(d)).returncode == 0
    assert wait_for(lambda: not alive(pid))
    new = wait_for(lambda: next(iter(pids_of(daemon) - {pid}), 0))
    assert new and wait_for(lambda: status(d)[1] == new)
    # svc -d: the daemon is stopped and stays down
    svc_run("svc", "-d", str(d))
    assert wait_for(lambda: not alive(new))
    assert wait_for(lambda: not status(d)[0])
    time.sleep(1.3)
    assert not pids_of(daemon) and not status(d)[0]
    res = svc_run("svstat", str(d))
    assert res.returncode == 1 and ", normally up" in res.stdout.decode()


def test_without_sticky_bit_a_double_fork_looks_like_an_exit(tree: Tree, sleepers):  # noqa: F811
    daemon = "sleep 1002.6"
    sleepers.append(daemon)
    d = make_service(tree.scandir, "plain", f"( {daemon} & )\nsleep 0.3\nexit 0")
    tree.start()
    # run exits, nothing is monitored: restarted every second, daemons pile up
    assert wait_for(lambda: len(pids_of(daemon)) >= 2, timeout=6)
    assert status(d)[1] not in pids_of(daemon)


def test_setpgid_group_signals_with_G(tree: Tree, sleepers):  # noqa: F811
    helper, main = "sleep 1003.1", "sleep 1003.2"
    sleepers += [helper, main]
    d = make_service(tree.scandir, "grp", f"{helper} &\nexec {main}")
    tree.start(SETPGID="1")
    pid = wait_for(lambda: status(d)[1] if cmdline(status(d)[1]) == main else 0)
    assert pid and os.getpgid(pid) == pid  # own process group
    first_helper = wait_for(lambda: next(iter(pids_of(helper)), 0))
    assert first_helper and os.getpgid(first_helper) == pid
    # -k signals the service only: the helper survives
    svc_run("svc", "-k", str(d))
    pid2 = wait_for(
        lambda: status(d)[1] if cmdline(status(d)[1]) == main and status(d)[1] != pid else 0
    )
    assert pid2 and alive(first_helper)
    helpers = wait_for(lambda: pids_of(helper) if len(pids_of(helper)) == 2 else None)
    second_helper = (helpers - {first_helper}).pop()
    # -Gk signals the whole group of the running service
    svc_run("svc", "-Gk", str(d))
    assert wait_for(lambda: not alive(second_helper) and not alive(pid2))
    assert alive(first_helper)  # another group


# --- 2. hooks --------------------------------------------------------------------


def _hook(d: Path, name: str, body: str) -> None:
    (d / name).write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(d / name, 0o755)


def test_init_alert_shutdown_wait_hooks_under_svscan(tree: Tree, sleepers):  # noqa: F811
    sleepers += ["sleep 1004.1", "sleep 1004.2"]
    out = tree.scandir.parent / "hooks.log"
    d = make_service(tree.scandir, "hk", f'echo "run $*" >> {out}\nexec sleep 1004.1')
    _hook(d, "init", f'echo "init $*" >> {out}')
    _hook(d, "alert", f'echo "alert $*" >> {out}')
    _hook(d, "shutdown", f'echo "shutdown $*" >> {out}')
    # w waits for hk to be up, then 2 more seconds
    w = make_service(tree.scandir, "w", "exec sleep 1004.2")
    (w / "wait").write_text("2\nhk\n")
    (d / "down").write_text("")
    tree.start()
    # init runs first, with no arguments (as the fork's)
    assert wait_for(lambda: out.exists() and out.read_text() == "init \n")
    assert wait_for(lambda: svc_run("svok", str(w)).returncode == 0)
    time.sleep(0.5)
    res = svc_run("svstat", str(w))
    assert res.returncode == 6 and res.stdout.decode().startswith(f"{w}: wait "), res.stdout
    assert not status(w)[0]
    # hk up (svc -u): w starts two seconds later
    svc_run("svc", "-u", str(d))
    pid = wait_for(lambda: status(d)[1])
    t0 = time.monotonic()
    res = wait_for(
        lambda: (r := svc_run("svstat", str(w))).stdout.decode().count("remaining") and r
    )
    assert res and res.returncode == 6
    assert wait_for(lambda: status(w)[0], timeout=6)
    assert 1.5 <= time.monotonic() - t0 <= 5
    assert out.read_text().splitlines()[:2] == ["init ", "run hk manual startup"]
    # an exit runs alert (dir pid code kind) then restarts
    os.kill(pid, signal.SIGKILL)
    pid2 = wait_pid_change(d, pid)
    assert pid2
    assert f"alert hk {pid} 9 stopped/signalled" in out.read_text()
    assert "run hk abnormal startup" in out.read_text()
    # svc -d runs shutdown (dir pid) before the signal
    svc_run("svc", "-d", str(d))
    assert wait_for(lambda: not status(d)[0])
    text = out.read_text()
    assert f"shutdown hk {pid2}" in text
    assert f"alert hk {pid2}" not in text  # wanted down: no alert


def test_init_failure_is_retried_and_blocks_start(tree: Tree, sleepers):  # noqa: F811
    sleepers.append("sleep 1004.3")
    d = make_service(tree.scandir, "bad", "exec sleep 1004.3")
    _hook(d, "init", "exit 1")
    tree.start()
    time.sleep(1.5)
    assert not status(d)[0] and not pids_of("sleep 1004.3")
    assert b"initialization failed for bad" in (tree.scandir.parent / "svscan.err").read_bytes()


def test_standalone_supervise_hooks(tmp_path: Path, sleepers):
    sleepers.append("sleep 1004.4")
    out = tmp_path / "hooks.log"
    d = make_service(tmp_path, "one", f'echo "run $*" >> {out}\nexec sleep 1004.4')
    _hook(d, "init", f'echo "init $*" >> {out}')
    _hook(d, "alert", f'echo "alert $*" >> {out}')
    _hook(d, "shutdown", f'echo "shutdown $*" >> {out}')
    proc = subprocess.Popen(
        [str(INDIMAIL), "supervise", "one"],
        cwd=tmp_path,
        env=sv_env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        pid = wait_for(lambda: status(d)[1])
        assert pid
        # the run script must have written its line before it is killed
        assert wait_for(lambda: out.exists() and "run one auto startup" in out.read_text())
        os.kill(pid, signal.SIGTERM)
        pid2 = wait_pid_change(d, pid)
        assert pid2
        assert wait_for(lambda: f"alert one {pid} 15 stopped/signalled" in out.read_text())
        proc.send_signal(signal.SIGTERM)  # shutdown hook, signal, exit
        assert proc.wait(timeout=10) == 0
        assert not alive(pid2)
        lines = out.read_text().splitlines()
        assert lines[0] == "init " and lines[1] == "run one auto startup"
        assert f"shutdown one {pid2}" in lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_shutdown_signal_replaces_term(tree: Tree, sleepers):  # noqa: F811
    sleepers.append("sleep 1004.5")
    out = tree.scandir.parent / "sig.log"
    d = make_service(
        tree.scandir,
        "ss",
        f"trap 'echo HUP >> {out}; exit 0' HUP\nsleep 1004.5 &\nwait",
    )
    tree.start(SHUTDOWN_SIGNAL=str(int(signal.SIGHUP)))
    assert wait_for(lambda: status(d)[0] and pids_of("sleep 1004.5"))
    svc_run("svc", "-d", str(d))
    assert wait_for(lambda: not status(d)[0])
    assert out.read_text() == "HUP\n"


# --- 3. state in RUNDIR ----------------------------------------------------------


def test_state_in_rundir(tmp_path: Path, sleepers):
    sleepers.append("sleep 1005.1")
    scandir = tmp_path / "service"
    scandir.mkdir()
    rundir = tmp_path / "run"
    rundir.mkdir()
    d = make_service(scandir, "s", "exec sleep 1005.1", log=True)
    env = sv_env(RUNDIR=str(rundir))
    del env["DISABLE_RUN"]
    t = Tree(scandir)
    proc = subprocess.Popen(
        [str(INDIMAIL), "svscan", str(scandir)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    t.procs.append(proc)
    state = rundir / "svscan" / "s"
    try:
        assert wait_for(lambda: status(state)[0] and status(state / "log")[0])
        pidfile = rundir / "svscan" / ".svscan.pid"
        # 4 bytes of binary pid, newline, decimal pid, newline (the binary
        # part may itself contain a newline byte: pid 2577 is 11 0a 00 00)
        data = pidfile.read_bytes()
        assert data == struct.pack("=i", proc.pid) + b"\n" + str(proc.pid).encode() + b"\n"
        assert not (scandir / ".svscan.pid").exists()
        assert not (d / "supervise").exists() and not (d / "log" / "supervise").exists()
        assert oct((state / "supervise").stat().st_mode & 0o777) == "0o700"
        pid = status(state)[1]
        res = svc_run("svstat", str(d), str(d / "log"), env=env)
        lines = res.stdout.decode().splitlines()
        assert lines[0].startswith(f"{d}: up ") and f"  pid {pid} " in lines[0]
        assert lines[1].startswith(f"{d / 'log'}: up ")
        assert svc_run("svok", str(d), env=env).returncode == 0
        assert svc_run("svc", "-d", str(d), env=env).returncode == 0
        assert wait_for(lambda: not status(state)[0])
        res = svc_run("svstat", str(d), env=env)
        assert res.returncode == 1 and ", normally up" in res.stdout.decode()
        svc_run("svc", "-u", str(d), env=env)
        assert wait_for(lambda: status(state)[0])
        # with DISABLE_RUN the tools look in the service dir only
        assert svc_run("svok", str(d)).returncode != 0
    finally:
        t.stop()
    assert not (rundir / "svscan" / ".svscan.pid").exists()


# --- 5. svc -w / -W / -T ---------------------------------------------------------


def test_svc_wait_up_down_and_timeout(tree: Tree, sleepers):  # noqa: F811
    sleepers.append("sleep 1006.1")
    d = make_service(tree.scandir, "s", "sleep 1.5\nexec sleep 1006.1")
    (d / "down").write_text("")
    tree.start()
    assert wait_for(lambda: svc_run("svok", str(d)).returncode == 0)
    # down already: -W returns at once
    t0 = time.monotonic()
    res = svc_run("svc", "-W", "-T", "5", str(d))
    assert res.returncode == 0 and time.monotonic() - t0 < 2
    # -w with nothing bringing it up times out: exit 3
    t0 = time.monotonic()
    res = svc_run("svc", "-w", "-T1", str(d))
    assert res.returncode == 3 and b"timed out" in res.stderr
    assert 0.8 <= time.monotonic() - t0 < 4
    # -uw: blocks until it is up
    res = svc_run("svc", "-uw", "-T", "10", str(d))
    assert res.returncode == 0 and status(d)[0]
    # -dW: blocks until it is down
    res = svc_run("svc", "-dW", "-T", "10", str(d))
    assert res.returncode == 0
    assert wait_for(lambda: not status(d)[0], timeout=2)
