"""Cross-compatibility with Debian's daemontools (svstat, svok, svc, supervise)."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

INDIMAIL = Path(sys.executable).parent / "indimail"
ENV = {"PATH": "/usr/bin:/bin", "DISABLE_RUN": "1", "HOME": "/tmp"}


def need_daemontools() -> None:
    for prog in ("svstat", "svok", "svc", "supervise"):
        if not os.path.exists(f"/usr/bin/{prog}"):
            pytest.skip("daemontools not installed (apt-get install daemontools)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, timeout=30, env=ENV)


def ours(*args: str) -> subprocess.CompletedProcess:
    return run(str(INDIMAIL), *args)


def pid_of(d: Path) -> int:
    try:
        data = (d / "supervise" / "status").read_bytes()
    except OSError:
        return 0
    return struct.unpack_from("<I", data, 12)[0] if len(data) >= 18 else 0


def wait_for(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    return pred()


def wait_svstat(d: Path, needle: str) -> str | None:
    """Debian svstat's line for ``d`` once it contains ``needle``."""

    def probe() -> str | None:
        out = run("/usr/bin/svstat", str(d)).stdout.decode()
        return out if needle in out else None

    return wait_for(probe)


def alive(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def make(tmp: Path, name: str, body: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "run").write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(d / "run", 0o755)
    return d


def start_supervise(prog: list[str], tmp: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*prog, name],
        cwd=tmp,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, d: Path, extra: list[int]) -> None:
    pids = [pid_of(d), *extra]
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for pid in pids:
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_debian_tools_read_and_control_ours(tmp_path: Path):
    need_daemontools()
    d = make(tmp_path, "svc", "exec sleep 1000")
    sup = start_supervise([str(INDIMAIL), "supervise"], tmp_path, "svc")
    seen: list[int] = []
    try:
        pid = wait_for(lambda: pid_of(d))
        seen.append(pid)
        assert run("/usr/bin/svok", str(d)).returncode == 0
        out = run("/usr/bin/svstat", str(d)).stdout.decode()
        assert re.fullmatch(rf"{re.escape(str(d))}: up \(pid {pid}\) \d+ seconds\n", out), out
        # their svc drives our supervise
        assert run("/usr/bin/svc", "-p", str(d)).returncode == 0
        assert wait_for(lambda: ", paused" in run("/usr/bin/svstat", str(d)).stdout.decode())
        run("/usr/bin/svc", "-c", str(d))
        assert wait_for(lambda: ", paused" not in run("/usr/bin/svstat", str(d)).stdout.decode())
        run("/usr/bin/svc", "-d", str(d))
        out = wait_for(
            lambda: (
                (o := run("/usr/bin/svstat", str(d)).stdout.decode()).startswith(f"{d}: down") and o
            )
        )
        assert out and ", normally up" in out and not alive(pid)
        time.sleep(1.2)
        run("/usr/bin/svc", "-u", str(d))
        pid2 = wait_for(lambda: pid_of(d))
        seen.append(pid2)
        assert pid2 and pid2 != pid
        assert f"up (pid {pid2})" in run("/usr/bin/svstat", str(d)).stdout.decode()
        run("/usr/bin/svc", "-x", str(d))  # exit once down
        run("/usr/bin/svc", "-d", str(d))
        assert wait_for(lambda: sup.poll() is not None)
        assert run("/usr/bin/svok", str(d)).returncode != 0
    finally:
        stop(sup, d, seen)


def test_debian_svstat_shows_want_flags(tmp_path: Path):
    need_daemontools()
    stubborn = make(tmp_path, "stubborn", "trap '' TERM; while :; do sleep 0.1; done")
    crash = make(tmp_path, "crash", "exit 1")
    procs = [
        start_supervise([str(INDIMAIL), "supervise"], tmp_path, n) for n in ("stubborn", "crash")
    ]
    seen: list[int] = []
    try:
        pid = wait_for(lambda: pid_of(stubborn))
        seen.append(pid)
        time.sleep(0.3)
        run("/usr/bin/svc", "-d", str(stubborn))  # TERM ignored: up, want down
        out = wait_svstat(stubborn, "want down")
        assert out and f"up (pid {pid})" in out
        res = ours("svstat", str(stubborn))
        assert res.returncode == 5 and ", want down" in res.stdout.decode()
        # a crashing service between two starts: down, want up
        out = wait_svstat(crash, "want up")
        assert out and out.startswith(f"{crash}: down ")
        run("/usr/bin/svc", "-k", str(stubborn))
    finally:
        stop(procs[0], stubborn, seen)
        stop(procs[1], crash, [])


def test_our_tools_read_and_control_debian_supervise(tmp_path: Path):
    need_daemontools()
    d = make(tmp_path, "svc", "exec sleep 1000")
    sup = start_supervise(["/usr/bin/supervise"], tmp_path, "svc")
    seen: list[int] = []
    try:
        pid = wait_for(lambda: pid_of(d))
        seen.append(pid)
        assert ours("svok", str(d)).returncode == 0
        res = ours("svstat", str(d))
        assert res.returncode == 0
        assert re.fullmatch(
            rf"{re.escape(str(d))}: up \d+\.\d{{9}} seconds  pid {pid} \n", res.stdout.decode()
        )
        assert ours("svc", "-d", str(d)).returncode == 0
        assert wait_for(lambda: ours("svstat", str(d)).returncode == 1)
        assert ", normally up" in ours("svstat", str(d)).stdout.decode()
        ours("svc", "-u", str(d))
        pid2 = wait_for(lambda: pid_of(d))
        seen.append(pid2)
        assert pid2 and pid2 != pid
        ours("svc", "-p", str(d))
        assert wait_for(lambda: ours("svstat", str(d)).returncode == 3)
        ours("svc", "-c", str(d))
        ours("svc", "-t", str(d))  # restarted by their supervise
        pid3 = wait_for(lambda: pid_of(d) not in (0, pid2) and pid_of(d))
        seen.append(pid3)
        assert pid3
        ours("svc", "-dx", str(d))
        assert wait_for(lambda: sup.poll() is not None)
        assert ours("svok", str(d)).returncode == 100
    finally:
        stop(sup, d, seen)
