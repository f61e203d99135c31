"""ucspi/pool.py: settings, the shared table of sessions, and a worker's
reset between two sessions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.ucspi import pool


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, (True, 100, 5.0, 20, 16 * 1024, 24)),
        ({"TCPSERVER_POOL": "0"}, (False, 100, 5.0, 20, 16 * 1024, 24)),
        (
            {
                "TCPSERVER_POOL_MAXUSE": "7",
                "TCPSERVER_POOL_IDLE": "30",
                "TCPSERVER_POOL_MAXIDLE": "0",
                "TCPSERVER_POOL_MAXMEM": "64",
                "TCPSERVER_POOL_MAX": "3",
            },
            (True, 7, 30.0, 0, 64 * 1024, 3),
        ),
        (
            {"TCPSERVER_POOL_MAXUSE": "0", "TCPSERVER_POOL_IDLE": "x"},
            (True, 100, 5.0, 20, 16384, 24),
        ),
        (
            {"TCPSERVER_POOL_MAXUSE": "-3", "TCPSERVER_POOL_IDLE": "99999999"},
            (True, 100, 5.0, 20, 16384, 24),
        ),
    ],
)
def test_settings(env: dict[str, str], want: tuple) -> None:
    s = pool.Settings(env)
    assert (s.enabled, s.maxuse, s.idle, s.maxidle, s.maxmem_kb, s.maxworkers) == want


BIG = 1 << 30  # the test process itself is no small fresh worker


def in_child(body) -> dict:
    """Run ``body()`` in a forked child (it changes process state); its dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = body()
        except BaseException as exc:  # pragma: no cover - reported to the parent
            out = {"error": repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


V4 = bytes(10) + b"\xff\xff"


def test_table_counts_busy_slots_per_client_in_every_process() -> None:
    """What -C and the status lines count: busy slots, by client address,
    as a forked worker wrote them (the mapping is shared, not copied)."""
    t = pool.Table(8)
    a, b = V4 + bytes([127, 0, 0, 1]), V4 + bytes([127, 0, 0, 2])
    w1, w2, child = t.claim(pool.IDLE), t.claim(pool.IDLE), t.claim(pool.BUSY, a)
    assert (w1, w2, child, t.high()) == (0, 1, 2, 3)
    pid = os.fork()
    if pid == 0:  # a worker marks its own slot
        t.set(w1, pool.BUSY, a)
        os._exit(0)
    os.waitpid(pid, 0)
    assert t.is_busy(w1) and not t.is_busy(w2)
    assert t.count(pool.BUSY) == 2 and t.count(pool.IDLE) == 1
    assert t.clients(a) == 2 and t.clients(a, besides=w1) == 1 and t.clients(b) == 0
    assert sorted(t.busy()) == [(w1, a), (child, a)]
    t.release(child)  # reaped: the slot is free and the top shrinks
    assert t.high() == 2 and t.clients(a) == 1
    assert t.claim(pool.BUSY, b) == 2  # the lowest free slot again


def test_table_matches_whole_slots_only() -> None:
    """Bytes that look like a busy client across two slots are no client."""
    t = pool.Table(4)
    tail = bytes(range(1, 16))
    t.claim(pool.BUSY, bytes(15) + bytes([pool.BUSY]))
    t.claim(pool.BUSY, tail + b"\x09")
    # state + address of this one appear from the last byte of slot 0 on
    straddling = bytes([pool.BUSY]) + tail
    assert bytes([pool.BUSY]) + straddling in t.mm[:]
    assert t.clients(straddling) == 0
    assert t.clients(tail + b"\x09") == 1


def test_table_full_and_free_again() -> None:
    t = pool.Table(2)
    assert t.claim(pool.IDLE) == 0 and t.claim(pool.IDLE) == 1
    assert t.claim(pool.IDLE) is None  # every slot handed out
    t.release(0)
    assert t.high() == 2  # slot 1 is still in use
    assert t.claim(pool.BUSY, V4 + bytes(4)) == 0
    t.release(1)
    t.release(0)
    assert (t.high(), t.count(pool.BUSY), t.count(pool.IDLE)) == (0, 0, 0)


def test_restore_puts_back_what_a_session_changed(tmp_path) -> None:
    def body() -> dict:
        from indimail.core import paths
        from indimail.ucspi import context

        os.environ["KEEP"] = "1"
        os.environ["CHANGE"] = "old"
        os.environ.pop("ADDED", None)
        base = pool.Baseline(maxmem_kb=BIG)
        before_paths = paths._PATHS
        # what a session may do
        os.environ["ADDED"] = "x"
        os.environ["CHANGE"] = "new"
        del os.environ["KEEP"]
        os.chdir(tmp_path)
        os.umask(0o077)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.alarm(100)
        sys.argv[:] = ["qmail-smtpd", "extra"]
        paths._PATHS = object()
        before_places = paths._PLACES
        paths._PLACES = object()
        context.set_current(context.Connection(None))
        clean = base.restore()
        umask = os.umask(0)
        return {
            "clean": clean,
            "env": [os.environ.get(k) for k in ("KEEP", "CHANGE", "ADDED")],
            "cwd_back": os.getcwd() == base.cwd,
            "umask": umask == base.umask,
            "sigterm": signal.getsignal(signal.SIGTERM) == base.signals[signal.SIGTERM],
            "sigusr2": signal.getsignal(signal.SIGUSR2) == base.signals[signal.SIGUSR2],
            "alarm": signal.alarm(0),
            "argv": sys.argv == base.argv,
            "paths": paths._PATHS is before_paths and paths._PLACES is before_places,
            "context": context.current() is None,
            "fd0": os.path.realpath(f"/proc/self/fd/{0}") == "/dev/null",
            # what a program exec'd from the next session inherits (the C
            # environment, not only the os.environ mapping)
            "exec_env": sorted(
                line
                for line in subprocess.run(
                    ["env"], capture_output=True, text=True, check=True
                ).stdout.splitlines()
                if line.split("=", 1)[0] in ("KEEP", "CHANGE", "ADDED")
            ),
        }

    got = in_child(body)
    assert got == {
        "clean": True,
        "env": ["1", "old", None],
        "cwd_back": True,
        "umask": True,
        "sigterm": True,
        "sigusr2": True,
        "alarm": 0,
        "argv": True,
        "paths": True,
        "context": True,
        "fd0": True,
        "exec_env": ["CHANGE=old", "KEEP=1"],
    }


def test_a_leaked_fd_or_child_retires_the_worker(tmp_path) -> None:
    def leak_fd() -> dict:
        base = pool.Baseline(maxmem_kb=BIG)
        keep = open(tmp_path / "held", "w")  # noqa: SIM115 - the leak under test
        clean = base.restore()
        keep.close()
        return {"clean": clean}

    def leave_child() -> dict:
        base = pool.Baseline(maxmem_kb=BIG)
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        clean = base.restore()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"clean": clean}

    def garbage_only() -> dict:
        base = pool.Baseline(maxmem_kb=BIG)

        class Cycle:
            pass

        c = Cycle()
        c.me = c
        c.f = open(tmp_path / "cyclic", "w")  # noqa: SIM115 - closed by the collector
        del c
        return {"clean": base.restore()}

    def fat() -> dict:
        base = pool.Baseline(maxmem_kb=1024)
        ballast = bytearray(8 << 20)  # still held when the session ends
        clean = base.restore()
        return {"clean": clean, "ballast": len(ballast)}

    def left_thread() -> dict:
        import threading

        base = pool.Baseline(maxmem_kb=BIG)
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, daemon=True)
        t.start()
        clean = base.restore()
        stop.set()
        t.join()
        return {"clean": clean}

    assert in_child(left_thread) == {"clean": False}
    assert in_child(fat) == {"clean": False, "ballast": 8 << 20}
    assert in_child(leak_fd) == {"clean": False}
    assert in_child(leave_child) == {"clean": False}
    assert in_child(garbage_only) == {"clean": True}


def test_later_sessions_garbage_is_still_collected_after_the_freeze(tmp_path) -> None:
    """After the first session the worker sets its long-lived objects aside
    (gc.freeze): the collection after each later session only scans what
    that session made, and still closes a file held in a reference cycle."""

    def body() -> dict:
        import gc

        base = pool.Baseline(maxmem_kb=BIG)
        first = base.restore()
        frozen = gc.get_freeze_count()

        class Cycle:
            pass

        c = Cycle()
        c.me = c
        c.f = open(tmp_path / "cyclic", "w")  # noqa: SIM115 - closed by the collector
        fd = c.f.fileno()
        del c
        second = base.restore()
        try:
            os.fstat(fd)
            still_open = True
        except OSError:
            still_open = False
        return {"first": first, "frozen": frozen > 0, "second": second, "open": still_open}

    assert in_child(body) == {"first": True, "frozen": True, "second": True, "open": False}


def test_which_chains_the_pool_may_run(tmp_path) -> None:
    from indimail.ucspi.tcpserver import _poolable_chain

    ours = Path(sys.executable).parent / "indimail"
    for name in ("rblsmtpd", "qmail-smtpd", "tcprulescheck"):
        (tmp_path / name).symlink_to(ours)
    rbl, smtpd, check = (str(tmp_path / n) for n in ("rblsmtpd", "qmail-smtpd", "tcprulescheck"))
    assert _poolable_chain([smtpd])
    assert _poolable_chain([rbl, "-r", "bl.test", "-t", "0", smtpd, "x"])
    assert _poolable_chain([rbl, "-r", "a", rbl, "-r", "b", smtpd])
    # whatever would be exec'd would take the worker's place
    assert not _poolable_chain([rbl, "-r", "bl.test", "/bin/cat"])
    assert not _poolable_chain([rbl, "-r", "bl.test"])  # nothing to run
    assert not _poolable_chain([rbl, "-Z", smtpd])  # bad option
    assert not _poolable_chain([check, "x.cdb"])  # ours, not poolable
    assert not _poolable_chain([])


@pytest.mark.parametrize("exclusive", [True, False], ids=["epoll-exclusive", "selectors"])
def test_waiter_sees_a_client_the_listener_and_the_idle_timeout(monkeypatch, exclusive) -> None:
    """What a worker waits for: a client on the shared socket, EOF from
    the listener, or nothing for its idle time.  Without EPOLLEXCLUSIVE
    (not Linux) it waits the same way through selectors."""
    import select
    import socket
    import time

    if exclusive and not hasattr(select, "EPOLLEXCLUSIVE"):
        pytest.skip("no EPOLLEXCLUSIVE on this system")
    if not exclusive:
        monkeypatch.delattr(select, "EPOLLEXCLUSIVE", raising=False)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    mine, theirs = socket.socketpair()
    w = pool.Waiter(lsock, theirs)
    assert (w.ep is not None) is exclusive
    t0 = time.monotonic()
    assert w.wait(0.2) == (False, False)  # idle: nothing within the time
    assert time.monotonic() - t0 >= 0.15
    client = socket.create_connection(lsock.getsockname())
    assert w.wait(5) == (True, False)
    conn, _ = lsock.accept()
    assert w.wait(0.1) == (False, False)  # taken: nothing waits any more
    mine.close()  # the listener went away
    assert w.wait(5) == (False, True)
    for s in (conn, client, lsock, theirs):
        s.close()
