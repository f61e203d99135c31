"""svscan + in-process supervision: restarts, svc letters, rescans, takeover."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

INDIMAIL = Path(sys.executable).parent / "indimail"


def status(d: Path) -> tuple[bool, int, bytes]:
    """(up, pid, raw) from d/supervise/status."""
    try:
        data = (d / "supervise" / "status").read_bytes()
    except OSError:
        return False, 0, b""
    if len(data) < 18:
        return False, 0, data
    pid = struct.unpack_from("<I", data, 12)[0]
    up = bool(data[20]) if len(data) >= 21 else pid != 0
    return up, pid if up else 0, data


def wait_for(pred, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def proc_stats() -> dict[int, list[bytes]]:
    """Each process's /proc/PID/stat fields after its name (state first)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            stats[int(entry)] = data[data.rindex(b")") + 2 :].split()
    return stats


def descendants(pid: int) -> set[int]:
    tree: dict[int, list[int]] = {}
    for child, fields in proc_stats().items():
        tree.setdefault(int(fields[1]), []).append(child)
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += tree.get(p, [])
    return found


def svc_run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(INDIMAIL), *args], capture_output=True, timeout=30, env=env or sv_env()
    )


def sv_env(**extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DISABLE_RUN": "1",
        "AUTOSCAN": "1",
        "SCANINTERVAL": "1",
        "TERMINATE_SESSION": "1",
        "KILLWAIT": "1",
        "HOME": "/tmp",
    }
    env.update(extra)
    return env


def make_service(scandir: Path, name: str, body: str, log: bool = False) -> Path:
    d = scandir / name
    d.mkdir(parents=True)
    (d / "run").write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(d / "run", 0o755)
    if log:
        (d / "log").mkdir()
        (d / "log" / "run").write_text("#!/bin/sh\nexec multilog t ./main\n")
        os.chmod(d / "log" / "run", 0o755)
    return d


class Tree:
    """svscan started by a test; everything it started is killed by pid."""

    def __init__(self, scandir: Path) -> None:
        self.scandir = scandir
        self.procs: list[subprocess.Popen] = []
        self.seen: set[int] = set()

    def start(self, **extra: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(INDIMAIL), "svscan", str(self.scandir)],
            env=sv_env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.scandir.parent / "svscan.err", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def remember(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.seen |= descendants(p.pid)
        for st in self.scandir.glob("**/supervise/status"):
            _up, pid, _ = status(st.parent.parent)
            if pid:
                self.seen.add(pid)

    def stop(self) -> None:
        self.remember()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for pid in self.seen:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def tree(tmp_path: Path):
    scandir = tmp_path / "service"
    scandir.mkdir()
    t = Tree(scandir)
    try:
        yield t
    finally:
        t.stop()


def test_crashing_service_restarts_with_backoff(tree: Tree):
    d = make_service(tree.scandir, "crash", "sleep 0.1; exit 1")
    tree.start()
    pids = set()
    start = time.monotonic()
    while time.monotonic() - start < 3.5:
        _up, pid, _ = status(d)
        if pid:
            pids.add(pid)
        time.sleep(0.02)
    # one start per second at most: 3-5 starts in 3.5 s, never a storm
    assert 3 <= len(pids) <= 5, pids
    out = svc_run("svstat", str(d)).stdout.decode()
    assert out.startswith(f"{d}: up ") or out.startswith(f"{d}: down ")


def test_svc_letters(tree: Tree):
    d = make_service(tree.scandir, "s", "exec sleep 1000")
    tree.start()
    up, pid1, _ = wait_for(lambda: status(d) if status(d)[0] else None)
    assert up
    res = svc_run("svstat", str(d))
    assert res.returncode == 0 and f"  pid {pid1} " in res.stdout.decode()
    # -d: down and stays down
    assert svc_run("svc", "-d", str(d)).returncode == 0
    assert wait_for(lambda: not status(d)[0])
    assert wait_for(lambda: not alive(pid1))
    time.sleep(1.3)
    assert not status(d)[0]
    res = svc_run("svstat", str(d))
    assert res.returncode == 1 and ", normally up" in res.stdout.decode()
    # -u: up again
    svc_run("svc", "-u", str(d))
    _, pid2, _ = wait_for(lambda: status(d) if status(d)[0] else None)
    assert pid2 != pid1
    # -t: TERM, restarted (want up)
    svc_run("svc", "-t", str(d))
    _, pid3, _ = wait_for(lambda: status(d) if status(d)[1] not in (0, pid2) else None)
    assert pid3 and not alive(pid2)
    # -k: KILL, restarted
    svc_run("svc", "-k", str(d))
    _, pid4, _ = wait_for(lambda: status(d) if status(d)[1] not in (0, pid3) else None)
    assert pid4 and not alive(pid3)
    # -o: once: after a TERM it stays down
    svc_run("svc", "-o", str(d))
    svc_run("svc", "-t", str(d))
    assert wait_for(lambda: not status(d)[0])
    time.sleep(1.3)
    assert not status(d)[0] and not alive(pid4)
    # -p / -c
    svc_run("svc", "-u", str(d))
    _, pid5, _ = wait_for(lambda: status(d) if status(d)[0] else None)
    svc_run("svc", "-p", str(d))
    assert wait_for(lambda: status(d)[2][16:17] == b"\x01")
    res = svc_run("svstat", str(d))
    assert res.returncode == 3 and ", paused" in res.stdout.decode()
    svc_run("svc", "-c", str(d))
    assert wait_for(lambda: status(d)[2][16:17] == b"\x00")
    # -dx: down and the supervisor for it leaves (svok fails). As an
    # admin retires a service: out of the scan directory first, or svscan
    # would start a new supervisor for it on its next scan.
    gone = tree.scandir / ".s"
    d.rename(gone)
    svc_run("svc", "-dx", str(gone))
    assert wait_for(lambda: svc_run("svok", str(gone)).returncode == 100)
    assert wait_for(lambda: not alive(pid5))
    time.sleep(1.5)  # past a rescan: nobody brought it back
    assert svc_run("svok", str(gone)).returncode == 100
    # svc on a dir without supervisor: exit 2
    time.sleep(0.2)
    other = make_service(tree.scandir.parent, "nosup", "exec sleep 1")
    assert svc_run("svc", "-u", str(other)).returncode == 2


def test_new_service_picked_up_within_rescan(tree: Tree):
    make_service(tree.scandir, "first", "exec sleep 1000")
    tree.start()
    assert wait_for(lambda: status(tree.scandir / "first")[0])
    d = make_service(tree.scandir, "later", "exec sleep 1000")
    t0 = time.monotonic()
    assert wait_for(lambda: status(d)[0], timeout=5)
    assert time.monotonic() - t0 < 3  # SCANINTERVAL=1


def test_down_file_stops_and_starts(tree: Tree):
    d = make_service(tree.scandir, "s", "exec sleep 1000")
    tree.start()
    assert wait_for(lambda: status(d)[0])
    (d / "down").write_text("")
    assert wait_for(lambda: not status(d)[0], timeout=5)
    (d / "down").unlink()
    assert wait_for(lambda: status(d)[0], timeout=5)


def test_sigkill_svscan_then_takeover_without_duplicates(tree: Tree):
    d = make_service(
        tree.scandir, "talk", "exec sh -c 'while :; do echo tick; sleep 0.1; done'", log=True
    )
    quiet = make_service(tree.scandir, "quiet", "exec sleep 1001")
    first = tree.start()
    assert wait_for(lambda: status(d)[0] and status(d / "log")[0] and status(quiet)[0])
    before = {p: status(p)[1] for p in (d, d / "log", quiet)}
    tree.remember()
    first.kill()  # SIGKILL
    first.wait(timeout=5)
    time.sleep(0.3)
    assert all(alive(pid) for pid in before.values())
    tree.start()
    assert wait_for(lambda: svc_run("svok", str(quiet)).returncode == 0)
    time.sleep(1.5)
    after = {p: status(p)[1] for p in (d, d / "log", quiet)}
    assert after == before  # adopted, not restarted
    sleepers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)) == "sleep 1001"]
    assert len(sleepers) == 1
    # the adopted logger still receives lines
    current = d / "log" / "main" / "current"
    size = current.stat().st_size
    assert wait_for(lambda: current.stat().st_size > size)
    # an adopted service that dies is restarted
    os.kill(before[quiet], signal.SIGKILL)
    _, newpid, _ = wait_for(
        lambda: status(quiet) if status(quiet)[1] not in (0, before[quiet]) else None
    )
    assert newpid
    # and a restarted service keeps writing into the adopted logger
    svc_run("svc", "-t", str(d))
    assert wait_for(lambda: status(d)[1] not in (0, before[d]))
    size = current.stat().st_size
    assert wait_for(lambda: current.stat().st_size > size)


def group_members(pgid: int) -> list[int]:
    return [pid for pid, fields in proc_stats().items() if int(fields[2]) == pgid]


def test_term_to_the_process_group_restarts_nothing(tree: Tree):
    # an init script (or a shell's job control) TERMs svscan's whole group:
    # the services die of it too, and svscan must not start them again on
    # its way out (daemontools' supervise, TERMed as well, would not)
    quiet = make_service(tree.scandir, "quiet", "exec sleep 1002")
    talk = make_service(
        tree.scandir, "talk", "exec sh -c 'while :; do echo tick; sleep 0.1; done'", log=True
    )
    proc = tree.start(TERMINATE_SESSION="")
    assert wait_for(lambda: status(quiet)[0] and status(talk)[0] and status(talk / "log")[0])
    time.sleep(1.5)  # up for over a second: an exit restarts it at once
    tree.remember()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    time.sleep(0.5)  # what would have been restarted has started by now
    left = [pid for pid in group_members(proc.pid) if alive(pid)]
    assert not left, [_cmdline(pid) for pid in left]
    assert not status(quiet)[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_second_svscan_refused(tree: Tree):
    make_service(tree.scandir, "s", "exec sleep 1000")
    tree.start()
    assert wait_for(lambda: (tree.scandir / ".svscan.pid").exists())
    res = subprocess.run(
        [str(INDIMAIL), "svscan", str(tree.scandir)], env=sv_env(), capture_output=True, timeout=30
    )
    assert res.returncode == 111 and b"already running" in res.stderr


def test_standalone_supervise_and_forked_logger(tmp_path: Path):
    d = make_service(tmp_path, "svc", "exec sleep 1000", log=True)
    env = sv_env()
    r, w = os.pipe()  # as svscan does: the service's stdout feeds the logger
    procs = [
        subprocess.Popen(
            [str(INDIMAIL), "supervise", "svc"],
            cwd=tmp_path,
            env=env,
            stdout=w,
            start_new_session=True,
        ),
        subprocess.Popen(
            [str(INDIMAIL), "supervise", "log", "svc"],
            cwd=d,
            env=env,
            stdin=r,
            start_new_session=True,
        ),
    ]
    os.close(r)
    os.close(w)
    try:
        assert wait_for(lambda: status(d)[0] and status(d / "log")[0])
        logpid = status(d / "log")[1]
        comm = Path(f"/proc/{logpid}/comm")
        # the forked logger names itself right after the fork
        assert wait_for(lambda: comm.read_text().strip() == "multilog"), comm.read_text()
        busy = subprocess.run(
            [str(INDIMAIL), "supervise", "svc"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=30,
        )
        assert busy.returncode == 100
    finally:
        pids = [status(d)[1], status(d / "log")[1]]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for pid in pids:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
