"""tcpserver's worker pool (ucspi/pool.py) serving qmail-smtpd in-process:
one worker serves connection after connection, and nothing of one session
(rules variables, relay rights, a denial) reaches the next."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import BinaryIO

import pytest
from smtp_service import SmtpService, compile_rules, served_by, session

from support import Instance

RULES = '127.0.0.2:allow,RELAYCLIENT="",MARK="two"\n127.0.0.3:deny\n127.:allow\n'
DENIED = "553 sorry, that domain isn't allowed to be relayed thru this MTA"


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    time.sleep(0.02)
                    continue
        except OSError:
            return True
        time.sleep(0.02)
    return False


def test_one_worker_serves_sessions_without_leaking_state(
    instance: Instance, tmp_path: Path
) -> None:
    with SmtpService(instance, tmp_path, rules=RULES) as svc:
        relay = session(svc.port, "127.0.0.2", "far@elsewhere.test")
        served_by(svc, 1)
        plain = session(svc.port, "127.0.0.1", "far@elsewhere.test")
        served_by(svc, 2)
        denied = session(svc.port, "127.0.0.3", "far@elsewhere.test")
        deadline = time.monotonic() + 10
        while " status 100\n" not in svc.logtext():
            assert time.monotonic() < deadline, svc.logtext()
            time.sleep(0.02)
        again = session(svc.port, "127.0.0.1", "user@mx.example.test")
        pids = served_by(svc, 4)
        log = svc.logtext()
        workers = set(svc.children())
    assert relay[3] == "250 ok", relay  # RELAYCLIENT from the rules of 127.0.0.2
    assert plain[3].startswith(DENIED), plain  # ... is gone for 127.0.0.1
    assert denied == [""], denied  # closed without a greeting
    assert again[3] == "250 ok" and again[4].startswith("221 "), again
    assert len(set(pids)) == 1, pids  # all four in one process ...
    assert pids[0] != svc.proc.pid and pids[0] in workers  # ... a child of the listener
    assert f"tcpserver: end {pids[0]} status 100\n" in log
    assert "tcpserver: deny " in log
    assert "Traceback" not in log and "internal error" not in log
    # the rules variable of 127.0.0.2 was in that session's environment only
    assert log.count("RELAYCLIENT") == 0


def test_worker_retires_after_maxuse(instance: Instance, tmp_path: Path) -> None:
    env = {"TCPSERVER_POOL_MAXUSE": "2"}
    with SmtpService(instance, tmp_path, rules=RULES, env=env) as svc:
        for n in range(1, 4):
            session(svc.port, "127.0.0.1", "user@mx.example.test")
            served_by(svc, n)
        pids = served_by(svc, 3)
        assert pids[0] == pids[1] != pids[2], pids
        assert gone(pids[0])


def test_idle_worker_exits(instance: Instance, tmp_path: Path) -> None:
    env = {"TCPSERVER_POOL_IDLE": "1"}
    with SmtpService(instance, tmp_path, rules=RULES, env=env) as svc:
        session(svc.port, "127.0.0.1", "user@mx.example.test")
        (pid,) = served_by(svc, 1)
        assert pid in svc.children()
        assert gone(pid, timeout=5)
        assert svc.proc.poll() is None
        # the listener forks a fresh worker for the next client
        assert session(svc.port, "127.0.0.1", "user@mx.example.test")[3] == "250 ok"
        assert served_by(svc, 2)[1] != pid


def test_pool_off_forks_per_connection(instance: Instance, tmp_path: Path) -> None:
    with SmtpService(instance, tmp_path, rules=RULES, env={"TCPSERVER_POOL": "0"}) as svc:
        for n in (1, 2):
            session(svc.port, "127.0.0.1", "user@mx.example.test")
            served_by(svc, n)
        first, second = served_by(svc, 2)
        assert first != second
        assert gone(first) and gone(second)


def test_workers_end_with_the_listener(instance: Instance, tmp_path: Path) -> None:
    svc = SmtpService(instance, tmp_path, rules=RULES).start()
    try:
        session(svc.port, "127.0.0.1", "user@mx.example.test")
        (pid,) = served_by(svc, 1)
        assert pid in svc.children()
        os.kill(svc.proc.pid, signal.SIGTERM)
        svc.proc.wait(10)
        assert gone(pid, timeout=5)  # EOF on its socketpair, not a signal
    finally:
        svc.stop()


def cram_challenge(port: int) -> tuple[socket.socket, BinaryIO, bytes]:
    """Connect, EHLO, AUTH CRAM-MD5: (socket, its reader, the challenge)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO client.test\r\n")
    while f.readline()[3:4] == b"-":
        pass
    s.sendall(b"AUTH CRAM-MD5\r\n")
    line = f.readline()
    assert line.startswith(b"334 "), line
    return s, f, base64.b64decode(line[4:].strip())


def test_cram_challenge_never_repeats_in_one_worker(instance: Instance, tmp_path: Path) -> None:
    """The original's <pid.time@host> would repeat when one worker serves two
    sessions in one second, and a response seen once could be replayed."""
    with SmtpService(instance, tmp_path, rules=RULES) as svc:
        s1, f1, first = cram_challenge(svc.port)
        good = hmac.new(b"secret", first, hashlib.md5).hexdigest()
        s1.sendall(base64.b64encode(b"test " + good.encode()) + b"\r\n")
        assert f1.readline().startswith(b"235 "), first
        f1.close()
        s1.close()
        served_by(svc, 1)
        s2, f2, second = cram_challenge(svc.port)
        s2.sendall(base64.b64encode(b"test " + good.encode()) + b"\r\n")  # the replay
        assert f2.readline().startswith(b"535 "), second
        f2.close()
        s2.close()
        pids = served_by(svc, 2)
    assert pids[0] == pids[1]
    assert first != second
    assert first.startswith(b"<%d." % pids[0]) and first.endswith(b"@mx.example.test>")


def test_concurrent_clients_reuse_as_many_workers_as_they_need(
    instance: Instance, tmp_path: Path
) -> None:
    """5 clients, each reconnecting at once after its 221, 10 times: the
    listener reads a worker's answer before it would fork another, so a
    handful of workers serve all 50 sessions, not one per reconnect.  About
    5 on a quiet machine; a reconnect that beats a busy worker's answer (its
    clean-up is slower on a loaded machine: CI saw 8) gets a new worker,
    which then serves too."""
    import threading

    with SmtpService(instance, tmp_path, rules=RULES) as svc:
        replies: list[str] = []

        def client() -> None:
            for _ in range(10):
                replies.append(session(svc.port, "127.0.0.1", "user@mx.example.test")[3])

        threads = [threading.Thread(target=client) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        pids = served_by(svc, 50, timeout=60)
    assert replies == ["250 ok"] * 50
    assert len(set(pids)) <= 12, sorted(set(pids))


def test_pool_max_zero_gives_each_session_its_own_worker(
    instance: Instance, tmp_path: Path
) -> None:
    with SmtpService(instance, tmp_path, rules=RULES, env={"TCPSERVER_POOL_MAX": "0"}) as svc:
        for n in (1, 2):
            session(svc.port, "127.0.0.1", "user@mx.example.test")
            served_by(svc, n)
        first, second = served_by(svc, 2)
        assert first != second
        assert gone(first)


# -- workers accept by themselves: -c, -C and the log lines still hold ------------------


def greeted(port: int, source: str = "127.0.0.1", wait: float = 10) -> socket.socket | None:
    """A connection from ``source`` that got qmail-smtpd's 220 (kept open),
    or None if the server closed it without one."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait, source_address=(source, 0))
    line = s.makefile("rb").readline()
    if line.startswith(b"220 "):
        return s
    assert line == b"", line
    s.close()
    return None


def wait_for(svc: SmtpService, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := svc.logtext()):
        assert time.monotonic() < deadline, log
        time.sleep(0.02)
    return log


def serving_pids(svc: SmtpService, n: int) -> list[int]:
    deadline = time.monotonic() + 10
    while len(pids := re.findall(r"tcpserver: pid (\d+) from ", svc.logtext())) < n:
        assert time.monotonic() < deadline, svc.logtext()
        time.sleep(0.02)
    return [int(p) for p in pids]


def test_per_ip_limit_counts_the_sessions_of_every_worker(
    instance: Instance, tmp_path: Path
) -> None:
    with SmtpService(instance, tmp_path, rules=RULES, maxperip=2) as svc:
        held = [greeted(svc.port), greeted(svc.port)]
        assert all(held)
        assert len(set(serving_pids(svc, 2))) == 2  # two workers, one client each
        assert greeted(svc.port) is None  # a third from 127.0.0.1: refused
        wait_for(svc, "tcpserver: end 127.0.0.1 perIPlimit 2\n")
        other = greeted(svc.port, "127.0.0.2")  # another client is served
        assert other is not None
        other.close()
        held.pop().close()  # one place of 127.0.0.1 frees when its session ends
        deadline = time.monotonic() + 10
        while (again := greeted(svc.port)) is None:
            assert time.monotonic() < deadline, svc.logtext()
            time.sleep(0.05)
        again.close()
        held.pop().close()
        log = svc.logtext()
    assert log.count("perIPlimit") >= 1
    assert "Traceback" not in log and "internal error" not in log


def test_concurrency_limit_counts_pooled_sessions(instance: Instance, tmp_path: Path) -> None:
    with SmtpService(instance, tmp_path, rules=RULES, limit=2) as svc:
        first, second = greeted(svc.port), greeted(svc.port)
        assert first and second
        wait_for(svc, "tcpserver: status: 2/2 un-encrypted session")
        third = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        third.settimeout(0.7)
        with pytest.raises(TimeoutError):
            third.recv(10)  # waits in the backlog: -c 2 places are taken
        first.close()
        third.settimeout(10)
        assert third.recv(4) == b"220 "
        third.close()
        second.close()
        assert len(svc.children()) <= 2  # never more workers than -c places


def test_worker_killed_in_a_session_is_logged_and_its_place_freed(
    instance: Instance, tmp_path: Path
) -> None:
    with SmtpService(instance, tmp_path, rules=RULES, maxperip=1) as svc:
        held = greeted(svc.port)
        assert held is not None
        (pid,) = serving_pids(svc, 1)
        assert pid in svc.children()
        os.kill(svc.proc.pid, signal.SIGUSR1)  # the listener lists the session
        wait_for(svc, f"tcpserver: 0: IP 127.0.0.1: PID {pid}\n")
        os.kill(pid, signal.SIGKILL)
        wait_for(svc, f"tcpserver: end {pid} killed by signal 9\n")
        log = wait_for(svc, f"sigchild, pid={pid}\n")
        held.close()
        assert f"tcpserver: status: 0/40 sigchild, pid={pid}\n" in log
        again = greeted(svc.port)  # -C 1: its place counts no more
        assert again is not None
        again.close()


def test_lowering_the_limit_ends_the_workers_beyond_it(instance: Instance, tmp_path: Path) -> None:
    """-c FILE re-read on SIGHUP: idle workers beyond the new limit end, and
    the pool serves no more clients at once than the file now says."""
    limit = tmp_path / "concurrency"
    limit.write_text("3\n")
    env = {"TCPSERVER_POOL_IDLE": "60"}  # only the lower limit may end them
    svc = SmtpService(instance, tmp_path, rules=RULES, env=env, limit=limit, maxperip=3)  # type: ignore[arg-type]
    with svc:
        held = [greeted(svc.port) for _ in range(3)]
        assert all(held)
        workers = serving_pids(svc, 3)
        for s in held:
            s.close()
        wait_for(svc, "tcpserver: status: 0/3 sigchild")
        limit.write_text("1\n")
        os.kill(svc.proc.pid, signal.SIGHUP)
        wait_for(svc, "tcpserver: sighup: 0/1\n")
        assert sum(gone(pid, timeout=5) for pid in workers) == 2  # one stays
        first = greeted(svc.port)
        assert first is not None
        second = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        second.settimeout(0.7)
        with pytest.raises(TimeoutError):
            second.recv(10)  # -c 1: waits for the first session to end
        first.close()
        second.settimeout(10)
        assert second.recv(4) == b"220 "
        second.close()


def test_a_worker_follows_a_rebuilt_rules_file(instance: Instance, tmp_path: Path) -> None:
    """A worker keeps its rules decisions from one connection to the next
    (``rules.Cache``), but a new tcprules build counts from the next one."""
    with SmtpService(instance, tmp_path, rules=RULES) as svc:
        time.sleep(2.2)  # the file has settled: decisions are kept from now on
        before = [session(svc.port, "127.0.0.2", "far@elsewhere.test") for _ in range(4)]
        compile_rules(
            [str(instance.bin / "tcprules")], svc.rules_cdb, "127.0.0.2:deny\n127.:allow\n"
        )
        after = [session(svc.port, "127.0.0.2", "far@elsewhere.test")]
        time.sleep(2.2)
        after.append(session(svc.port, "127.0.0.2", "far@elsewhere.test"))
        other = session(svc.port, "127.0.0.1", "user@mx.example.test")
        pids = served_by(svc, 7)
        log = svc.logtext()
    assert all(b[3] == "250 ok" for b in before), before  # RELAYCLIENT from the rules
    assert after == [[""], [""]], after  # denied by the new build
    assert other[3] == "250 ok", other
    assert set(pids[4:6]) <= set(pids[:4]), pids  # by workers that knew the old rule
    assert "Traceback" not in log
