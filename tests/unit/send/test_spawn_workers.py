"""The spawner's delivery workers: reuse, reports, crashes, retirement.

A spawner runs in a forked process with pipes for qmail-send's side, as
qmail-start runs it; the child function records what a delivery saw.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from indimail.queue.layout import Layout
from indimail.send import spawn
from support import make_instance


class _Child:
    """A reusable delivery: its behaviour is chosen by the recipient."""

    def __init__(self, reusable: bool = True) -> None:
        self._reusable = reusable

    def reusable(self, _req: spawn.Request) -> bool:
        return self._reusable

    def __call__(self, req: spawn.Request, size: int) -> int:
        box = req.recipient.partition(b"@")[0]
        first = os.read(0, 5)
        os.write(1, b"pid %d size %d head %s\n" % (os.getpid(), size, first))
        if box == b"crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if box == b"raise":
            raise RuntimeError("boom")
        if box == b"fail":
            os.write(2, b"on stderr\n")
            return 100
        # a program that outlives the delivery, holding fd 1
        if box == b"bg" and os.fork() == 0:
            time.sleep(0.5)
            os.write(1, b"late\n")
            os._exit(0)
        return 0


def _request(slot: int, rcpt: bytes, messid: bytes = b"0/7") -> bytes:
    return bytes((slot, 0)) + messid + b"\0s@x\0\0\0" + rcpt + b"\0"


class _Running:
    def __init__(self, tmp_path, child: _Child) -> None:
        (tmp_path / "mess" / "0").mkdir(parents=True)
        (tmp_path / "mess" / "0" / "7").write_bytes(b"Hello world\n")
        layout = Layout(tmp_path, split=1)
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(self.cmd_w)
                os.close(self.res_r)
                sp = spawn.Spawner(layout, child, spawn.lspawn_report, None, cmd_r, res_w)
                code = sp.serve()
            finally:
                os._exit(code)
        os.close(cmd_r)
        os.close(res_w)
        hello = os.read(self.res_r, 2)
        assert hello == bytes((spawn.SPAWN & 0xFF, spawn.SPAWN >> 8))
        self.buf = b""

    def send(self, *requests: bytes) -> None:
        os.write(self.cmd_w, b"".join(requests))

    def results(self, n: int, timeout: float = 10.0) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {out} of {n} results"
            if select.select([self.res_r], [], [], left)[0]:
                chunk = os.read(self.res_r, 65536)
                assert chunk
                self.buf += chunk
            while (end := self.buf.find(b"\0", 2)) != -1:
                out[self.buf[0] | (self.buf[1] << 8)] = self.buf[2:end]
                self.buf = self.buf[end + 1 :]
        return out

    def close(self) -> int:
        os.close(self.cmd_w)
        _pid, status = os.waitpid(self.pid, 0)
        os.close(self.res_r)
        return status


@pytest.fixture
def running(tmp_path):
    r = _Running(tmp_path, _Child())
    yield r
    r.close()


def _pid(text: bytes) -> int:
    return int(text.split()[1])


def _gone(pid: int, between=None, timeout: float = 10) -> bool:
    """Whether ``pid`` is gone (exited and reaped) within ``timeout``;
    ``between`` runs between two looks."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        if between is not None:
            between()
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


def test_sequential_deliveries_share_one_worker(running):
    pids = set()
    for _ in range(5):
        running.send(_request(3, b"ok@x"))
        text = running.results(1)[3]
        assert text.startswith(b"Kpid ")
        assert b"size 12 head Hello" in text
        pids.add(_pid(text))
    assert len(pids) == 1  # one warm worker, no fork per delivery


def test_reports_as_a_forked_child(running):
    running.send(_request(1, b"ok@x"), _request(2, b"fail@x"), _request(4, b"raise@x"))
    res = running.results(3)
    assert res[1].startswith(b"K") and res[1].endswith(b"\n")
    assert res[2].startswith(b"D") and res[2].endswith(b"on stderr\n")
    assert res[4].startswith(b"Z")
    assert b"internal error in delivery: RuntimeError: boom" in res[4]
    # each delivery reads its message from offset 0, in whichever worker ran
    # it (one that has answered is reused at once: at most 3 workers)
    assert all(b" head Hello" in t for t in res.values()), res
    assert len({_pid(t[1:]) for t in res.values()}) <= 3


def test_worker_crash_is_reported_and_replaced(running):
    running.send(_request(1, b"crash@x"))
    res = running.results(1)
    assert res[1] == b"Zqmail-local crashed.\n"
    running.send(_request(2, b"ok@x"))
    assert running.results(1)[2].startswith(b"Kpid ")


def test_report_waits_for_every_writer(running):
    running.send(_request(1, b"bg@x"))
    text = running.results(1)[1]
    assert text.startswith(b"K") and text.endswith(b"late\n")


def test_idle_workers_retire_and_stop_with_the_spawner(tmp_path, monkeypatch):
    monkeypatch.setattr(spawn, "WORKER_IDLE", 0.0)
    r = _Running(tmp_path, _Child())
    try:
        r.send(_request(1, b"ok@x"))
        first = _pid(r.results(1)[1][1:])

        def wake() -> None:  # the spawner's loop
            r.send(_request(2, b"ok@x"))
            r.results(1)

        assert _gone(first, wake)  # exited and reaped
    finally:
        status = r.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_idle_worker_reaped_while_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(spawn, "WORKER_IDLE", 0.2)
    r = _Running(tmp_path, _Child())
    try:
        r.send(_request(1, b"ok@x"))
        pid = _pid(r.results(1)[1][1:])
        assert _gone(pid)  # retired, and no zombie left
    finally:
        r.close()


def test_not_reusable_forks_per_delivery(tmp_path):
    r = _Running(tmp_path, _Child(reusable=False))
    try:
        r.send(_request(1, b"ok@x"))
        a = _pid(r.results(1)[1][1:])
        r.send(_request(1, b"ok@x"))
        b = _pid(r.results(1)[1][1:])
        assert a != b
    finally:
        r.close()


def test_workers_gone_after_the_spawner_ends(tmp_path):
    r = _Running(tmp_path, _Child())
    r.send(_request(1, b"ok@x"), _request(2, b"ok@x"))
    pids = [_pid(t[1:]) for t in r.results(2).values()]
    status = r.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")  # reaped by the spawner


def test_remote_deliveries_may_use_workers(tmp_path) -> None:
    """qmail-rspawn never switches accounts: every remote delivery is reusable."""
    child = spawn.rspawn_child(Layout(tmp_path, split=1))
    req = spawn.Request(0, b"0/7", b"s@x", b"", b"", b"r@y.test")
    assert child.reusable(req) is True


class _Accounts(_Child):
    """As root: a delivery to ``uNNN@x`` belongs to account NNN (uid = gid)."""

    def worker_key(self, req: spawn.Request) -> tuple[int, int] | None:
        box = req.recipient.partition(b"@")[0]
        return (int(box[1:]), int(box[1:])) if box[:1] == b"u" else None

    def become(self, key: tuple[int, int]) -> bool:
        os.setgroups([])
        os.setgid(key[1])
        os.setuid(key[0])
        return True

    def __call__(self, req: spawn.Request, size: int) -> int:
        os.read(0, 5)
        os.write(1, b"pid %d uid %d gid %d\n" % (os.getpid(), os.getuid(), os.getgid()))
        return 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")
def test_account_workers_serve_only_their_account(tmp_path):
    r = _Running(tmp_path, _Accounts())
    try:
        seen: dict[int, set[tuple[int, int]]] = {}
        first: dict[int, int] = {}
        for round_ in range(3):
            rcpts = [b"u65534@x", b"u65533@x", b"plain@x", b"u65534@x"]
            r.send(*(_request(i, rcpt) for i, rcpt in enumerate(rcpts)))
            got = r.results(len(rcpts))
            for i, rcpt in enumerate(rcpts):
                words = got[i].split()
                pid, uid, gid = int(words[1]), int(words[3]), int(words[5])
                want = 0 if rcpt == b"plain@x" else int(rcpt[1:6])
                assert (uid, gid) == (want, want), (rcpt, got[i])
                seen.setdefault(pid, set()).add((uid, gid))
                if round_ == 0 and i < 3:
                    first[want] = pid
        # one account per worker, ever; the accounts' workers were reused
        assert all(len(ids) == 1 for ids in seen.values()), seen
        assert len({first[65534], first[65533], first[0]}) == 3
        assert first[65534] in seen and len(seen) <= 6, seen
    finally:
        assert r.close() == 0


def test_local_child_account_keys(tmp_path, monkeypatch):
    """qmail-lspawn as root: users/cdb accounts get their own workers; root,
    the password database and unknown users keep the fork per delivery; a
    worker that became one account refuses another's delivery (127)."""
    from indimail.core import paths
    from indimail.deliver import users

    conf = tmp_path / "p.conf"
    conf.write_text(f"SYSCONFDIR={tmp_path}\nQMAILHOME={tmp_path}\n")
    p = paths.load({"INDIMAIL_PATHS": str(conf)})
    assert not p.rootless
    child = spawn.lspawn_child(p, "./Maildir/")
    monkeypatch.setattr(os, "getuid", lambda: 0)

    def req(prepared: object) -> spawn.Request:
        return spawn.Request(1, b"0/7", b"s@x", b"", b"", b"alice@x", prepared)

    alice = users.UserEntry("alice", 1234, 100, str(tmp_path), "", "")
    rootish = users.UserEntry("toor", 0, 0, "/root", "", "")
    assert child.worker_key(req(alice)) == (1234, 100) and child.reusable(req(alice))
    assert child.worker_key(req(rootish)) is None and not child.reusable(req(rootish))
    assert child.worker_key(req(None)) is None and not child.reusable(req(None))
    child.account = (4321, 100)  # as become() leaves a worker of another account
    assert child(req(alice), 0) == 127


@pytest.mark.parametrize("command", ["qmail-lspawn", "qmail-rspawn"])
@pytest.mark.parametrize("stdin", ["/dev/null", "file"])
def test_started_by_hand_without_qmail_send(tmp_path, command, stdin):
    # an admin trying a spawner by hand: its input is not qmail-send's pipe
    # but a file or /dev/null, which epoll refuses; like the original's
    # select() loop it reads EOF and ends, after announcing its concurrency
    inst = make_instance(tmp_path / "inst")
    path = "/dev/null"
    if stdin == "file":
        path = str(tmp_path / "commands")
        Path(path).write_bytes(b"not a whole command")
    with open(path, "rb") as fh:
        res = inst.run(command, "./Maildir/", stdin=fh, timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr == b""
    assert len(res.stdout) == 2 and int.from_bytes(res.stdout, "little") > 0


@pytest.mark.parametrize("command", ["qmail-lspawn", "qmail-rspawn", "qmail-clean"])
def test_pipes_to_qmail_send_that_fail(tmp_path, command):
    # qmail-send's pipes replaced by hand: fd 0 closed (reads fail) or fd 1
    # on a full disk (writes fail); each ends with 111 and says which
    inst = make_instance(tmp_path / "inst")
    args = [str(inst.bin / command)] + (["./Maildir/"] if "spawn" in command else [])
    closed = subprocess.run(
        args,
        capture_output=True,
        env=inst.env(),
        preexec_fn=lambda: os.close(0),
        timeout=30,
    )
    assert closed.returncode == 111, closed.stderr
    what = "commands" if "spawn" in command else "requests"
    assert closed.stderr == f"{command}: unable to read {what}: Bad file descriptor\n".encode()
    if "spawn" not in command:
        return  # qmail-clean writes only answers to requests
    with open("/dev/full", "wb") as full:
        res = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, env=inst.env()
        )
    assert res.returncode == 111
    why = "unable to write to qmail-send: No space left on device"
    assert res.stderr == f"{command}: {why}\n".encode()
