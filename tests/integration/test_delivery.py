"""End to end in a rootless instance: sendmail -> queue -> qmail-send -> mailboxes.

Local users get a Maildir (.qmail), an mbox and a |program; a remote domain
is routed by smtproutes to Postfix's smtp-sink on loopback.  The queue is
empty afterwards and the log lines have the original's format.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support import need_program

LOG_PATTERNS = [
    r"new msg \d+ queue\d+",
    r"info msg \d+: bytes \d+ from <[^>]*> qp \d+ uid \d+ queue\d+",
    r"starting delivery \d+(\.\d+)?: msg \d+ to (local|remote) \S+ queue\d+",
    r"delivery \d+(\.\d+)?: (success|deferral|failure): \S* queue\d+",
    r"status: local \d+/\d+ remote \d+/\d+ queue\d+( exitasap)?",
    r"end msg \d+ qmail-send: queue\d+",
    r"bounce msg \d+ qp \d+ queue\d+",
    r"(double|triple) bounce: discarding bounce/\d+ queue\d+",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Delivery:
    """qscheduler running for an instance; stopped with TERM at the end."""

    def __init__(self, instance, env: dict[str, str] | None = None) -> None:
        self.instance = instance
        self.log = instance.top / "send.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(instance.bin / "qscheduler"), "-s", "./Maildir/"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or instance.env(),
                cwd=instance.top,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("timed out; log:\n" + self.log.read_text())


def queue_empty(instance) -> bool:
    res = instance.run("qmail-qstat")
    return res.stdout == (b"messages in queue: 0\nmessages in queue but not yet preprocessed: 0\n")


def add_user(instance, name: str) -> Path:
    """An assign entry for ``name`` (rootless: the same account, its own home)."""
    home = instance.top / "home" / name
    home.mkdir(parents=True)
    assign = instance.top / "etc" / "users" / "assign"
    uid, gid = os.getuid(), os.getgid()
    import pwd

    me = pwd.getpwuid(uid).pw_name
    lines = assign.read_text().splitlines()
    lines.insert(0, f"={name}:{me}:{uid}:{gid}:{home}:::")
    assign.write_text("\n".join(lines) + "\n")
    assert instance.run("qmail-newu").returncode == 0
    return home


@pytest.fixture
def delivery(instance):
    d = Delivery(instance)
    yield d
    d.stop()


def test_local_maildir_mbox_program_and_remote(instance, tmp_path):
    sink = need_program("smtp-sink", "postfix")
    port = free_port()
    # smtp-sink drops privileges: its dump dir must be reachable by "nobody"
    dump = Path(tempfile.mkdtemp(prefix="sink-", dir="/tmp"))
    request_cleanup = shutil.rmtree
    sink_cmd = [sink, "-d", str(dump) + "/%M.", f"127.0.0.1:{port}", "10"]
    if os.getuid() == 0:
        sink_cmd[1:1] = ["-u", "nobody"]
        os.chmod(dump, 0o777)
    sinkp = subprocess.Popen(sink_cmd, stderr=subprocess.PIPE)
    try:
        (instance.control / "smtproutes").write_text(f"remote.test:127.0.0.1:{port}\n")
        alice = add_user(instance, "alice")
        (alice / "Maildir").mkdir()
        for sub in ("cur", "new", "tmp"):
            (alice / "Maildir" / sub).mkdir()
        (alice / ".qmail").write_text("./Maildir/\n")
        bob = add_user(instance, "bob")
        (bob / ".qmail").write_text("./mbox\n")
        carol = add_user(instance, "carol")
        script = carol / "prog.sh"
        script.write_text(
            '#!/bin/sh\n{ echo "SENDER=$SENDER"; echo "RECIPIENT=$RECIPIENT";'
            ' echo "LOCAL=$LOCAL"; cat; } > ' + str(carol / "out") + "\n"
        )
        script.chmod(0o755)
        (carol / ".qmail").write_text(f"|{script}\n")
        d = Delivery(instance)
        try:
            msg = b"Subject: e2e\n\nHello over there.\n"
            res = instance.run(
                "sendmail",
                "-f",
                "sender@mx.example.test",
                "alice",
                "bob",
                "carol@mx.example.test",
                "dave@remote.test",
                input=msg,
            )
            assert res.returncode == 0, res.stderr
            d.wait_for(lambda: queue_empty(instance))
            # wait for the status line that follows the last delivery
            d.wait_for(lambda: any(line.startswith("end msg") for line in d.lines()))
        finally:
            d.stop()
    finally:
        sinkp.terminate()
        sinkp.wait(timeout=10)
    dumped = [f.read_bytes() for f in dump.iterdir()]
    request_cleanup(dump)

    (mail,) = list((alice / "Maildir" / "new").iterdir())
    data = mail.read_bytes()
    assert data.startswith(
        b"Return-Path: <sender@mx.example.test>\nDelivered-To: alice@mx.example.test\n"
    )
    assert data.endswith(b"\n\nHello over there.\n")
    assert re.fullmatch(r"\d+\.I[0-9a-f]+V[0-9a-f]+M\d+P\d+\..+,S=\d+", mail.name)
    assert int(mail.name.rsplit(",S=", 1)[1]) == len(data)
    mbox = (bob / "mbox").read_bytes()
    assert mbox.startswith(b"From sender@mx.example.test ")
    assert b"\nDelivered-To: bob@mx.example.test\n" in mbox
    assert mbox.endswith(b"Hello over there.\n\n")
    out = (carol / "out").read_bytes()
    assert out.startswith(
        b"SENDER=sender@mx.example.test\nRECIPIENT=carol@mx.example.test\nLOCAL=carol\n"
    )
    assert out.endswith(b"Hello over there.\n")
    assert len(dumped) == 1
    assert b"Hello over there." in dumped[0]

    lines = d.lines()
    assert lines, "no log"
    for line in lines:
        assert any(re.fullmatch(p, line) for p in LOG_PATTERNS), line
    assert sum(1 for line in lines if ": success: " in line) == 4
    assert queue_empty(instance)


def test_permanent_failure_bounces_to_sender_and_double_bounce(instance, delivery):
    # nosuch@ has no mailbox: one bounce to the local sender; a bounce of a
    # bounce (null sender) goes to doublebounceto (postmaster -> alias Maildir).
    me = __import__("pwd").getpwuid(os.getuid()).pw_name
    res = instance.run(
        "sendmail",
        "-f",
        f"{me}@mx.example.test",
        "nosuch@mx.example.test",
        input=b"Subject: will bounce\n\nbody\n",
    )
    assert res.returncode == 0
    res = instance.run(
        "sendmail",
        "-f",
        "",
        "nosuch2@mx.example.test",
        input=b"Subject: bounce of nothing\n\nbody\n",
    )
    assert res.returncode == 0
    delivery.wait_for(
        lambda: (
            queue_empty(instance)
            and sum(1 for line in delivery.lines() if line.startswith("end msg")) >= 3
        )
    )
    inbox = list((instance.top / "home" / me / "Maildir" / "new").iterdir())
    assert len(inbox) == 1
    bounce = inbox[0].read_bytes()
    assert b"\nFrom: MAILER-DAEMON@mx.example.test\n" in bounce
    assert b"\nSubject: failure notice\n" in bounce
    assert b"Hi. This is the qmail-send program at mx.example.test.\n" in bounce
    assert b"<nosuch@mx.example.test>:\nSorry, no mailbox here by that name. (#5.1.1)\n" in bounce
    assert b"--- Enclosed is a copy of the message.\n" in bounce
    assert b"Return-Path: <" + me.encode() + b"@mx.example.test>\nReceived: " in bounce
    alias = list((instance.top / "var" / "alias" / "Maildir" / "new").iterdir())
    assert len(alias) == 1
    double = alias[0].read_bytes()
    assert b"I tried to deliver a bounce message to this address, but the bounce bounced!" in double
    assert b"--- Enclosed is the original bounce.\n" in double
    assert any(line.startswith("bounce msg ") for line in delivery.lines())


def test_ps_shows_the_originals_process_names(instance, delivery):
    """An admin's ``ps``/``pgrep qmail-send`` finds each queue's processes
    by the original's names, not as copies of qscheduler."""

    def names() -> list[str]:
        found = []
        todo = [delivery.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    found.append(fh.read().strip())
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        todo += [int(k) for k in fh.read().split()]
            except OSError:
                continue
        return sorted(found)

    # two queues: one qmail-send, lspawn, rspawn and clean each
    want = sorted(
        ["qscheduler"] + ["qmail-send", "qmail-lspawn", "qmail-rspawn", "qmail-clean"] * 2
    )
    delivery.wait_for(lambda: names() == want)
    res = instance.run("sendmail", "postmaster@mx.example.test", input=b"Subject: ps\n\nx\n")
    assert res.returncode == 0
    delivery.wait_for(lambda: queue_empty(instance))
    # the delivery worker that stays for the next message is a qmail-local
    assert "qmail-local" in names()
