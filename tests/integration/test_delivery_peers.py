"""Delivery against real peers: Postfix as the remote MX, Dovecot reading our Maildirs.

(a) Our instance routes ``peer.test`` by smtproutes to a private Postfix
    (own config, queue and data directories in a temp dir, smtpd on a free
    loopback port, ``virtual`` delivery into a Maildir owned by ``nobody``):
    the message arrives with its body byte for byte.
(b) Messages delivered by our qmail-local into a Maildir are read by
    Dovecot (``doveadm fetch`` through a private ``dovecot -F`` with a
    passwd-file userdb): headers, bodies and the ``,S=`` sizes agree.

The module also holds :class:`SmtpPeer`, the small SMTP server on loopback
used by the other ``test_delivery_*`` files (retry, DNS, bad input): it
records every session (start time, commands, message) and replies per
session from a plan, so a test can make a server refuse, close or talk
garbage on chosen attempts.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_delivery import Delivery, queue_empty

from support import ROOT, need_program

sys.path.insert(0, str(ROOT / "bench"))
from private_postfix import PrivatePostfix

ME = pwd.getpwuid(os.getuid()).pw_name
SENDER = f"{ME}@mx.example.test"

# -- a scripted SMTP peer ------------------------------------------------------

CLOSE = "<CLOSE>"  # a plan value: drop the connection at this point
DEFAULT_REPLIES = {
    "greeting": "220 peer.test ESMTP",
    "ehlo": "250 peer.test",
    "mail": "250 ok",
    "rcpt": "250 ok",
    "data": "354 go ahead",
    "body": "",  # CLOSE: drop the connection after the first line of the body
    "end": "250 ok queued",
    "quit": "221 bye",
    "again": "",  # CLOSE: drop the connection at a second MAIL in one session
    "after": "",  # CLOSE: hang up right after the reply to the message
}


@dataclass
class Session:
    n: int
    start: float
    commands: list[str] = field(default_factory=list)
    message: bytes | None = None  # LF line ends, dot-stuffing undone
    received: list[bytes] = field(default_factory=list)  # every whole message, in order
    closed_by_peer: bool = False


class _Drop(Exception):
    pass


class SmtpPeer:
    """An SMTP server on ``(ip, port)`` answering per session from ``plan(n)``.

    ``plan(n)`` returns replies that replace DEFAULT_REPLIES for the n-th
    session (0-based); a reply is a text (CRLF added; may hold ``\\r\\n``
    for multi-line replies), raw ``bytes`` sent as they are, or CLOSE.
    Port 0 picks a free port; ``sock`` is an already bound socket.
    """

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 0,
        plan: Callable[[int], dict] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        if sock is None:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
        sock.listen(16)
        sock.settimeout(0.2)
        self.sock = sock
        self.ip = ip
        self.port = sock.getsockname()[1]
        self.plan = plan or (lambda n: {})
        self.sessions: list[Session] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> SmtpPeer:
        self._acceptor.start()
        return self

    def close_listener(self) -> None:
        """Stop accepting: connections are refused from now on."""
        self._stop.set()
        self._acceptor.join(5)
        self.sock.close()

    def go_down(self) -> None:
        """The server is gone: refuse new connections and drop the open
        ones (a client may have kept one from an earlier message)."""
        self.close_listener()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.close_listener()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> SmtpPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def messages(self) -> list[bytes]:
        return [s.message for s in self.sessions if s.message is not None and not s.closed_by_peer]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                s = Session(n=len(self.sessions), start=time.time())
                self.sessions.append(s)
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, s), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, s: Session) -> None:
        replies = {**DEFAULT_REPLIES, **self.plan(s.n)}
        conn.settimeout(15)
        rfile = conn.makefile("rb")

        def say(stage: str) -> None:
            reply = replies[stage]
            if reply == CLOSE:
                raise _Drop()
            conn.sendall(reply if isinstance(reply, bytes) else reply.encode() + b"\r\n")

        try:
            say("greeting")
            while True:
                line = rfile.readline(4096)
                if not line:
                    s.commands.append("<EOF>")
                    return
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                s.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    say("ehlo")
                elif verb == "MAIL":
                    if replies["again"] == CLOSE and "<MESSAGE>" in s.commands:
                        raise _Drop()
                    say("mail")
                elif verb == "RCPT":
                    say("rcpt")
                elif verb == "DATA":
                    say("data")
                    go = replies["data"]
                    if not (go.decode() if isinstance(go, bytes) else go).startswith("354"):
                        continue
                    body = bytearray()
                    while True:
                        line = rfile.readline(1 << 16)
                        if not line:
                            s.commands.append("<EOF in DATA>")
                            return
                        if replies["body"] == CLOSE:
                            s.message = bytes(body + line)
                            s.closed_by_peer = True
                            raise _Drop()
                        if line == b".\r\n":
                            break
                        body += line[1:] if line.startswith(b".") else line
                    s.message = bytes(body).replace(b"\r\n", b"\n")
                    s.received.append(s.message)
                    s.commands.append("<MESSAGE>")
                    say("end")
                    if replies["after"] == CLOSE:
                        s.commands.append("<HANGUP>")
                        return
                elif verb == "QUIT":
                    say("quit")
                    return
                elif verb in ("RSET", "NOOP"):
                    conn.sendall(b"250 ok\r\n")
                else:
                    conn.sendall(b"502 5.5.2 not implemented\r\n")
        except _Drop:
            s.closed_by_peer = True
        except OSError as exc:
            self.errors.append(f"session {s.n}: {exc}")
        finally:
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass


# -- helpers shared by the delivery tests ---------------------------------------


def inbox(instance, user: str = ME) -> list[Path]:
    """Messages in ``user``'s Maildir/new of the instance, oldest first."""
    new = instance.top / "home" / user / "Maildir" / "new"
    return sorted(new.iterdir(), key=lambda p: p.stat().st_mtime) if new.is_dir() else []


def alias_inbox(instance) -> list[Path]:
    new = instance.top / "var" / "alias" / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def send(instance, sender: str, *rcpts: str, message: bytes) -> None:
    res = instance.run("sendmail", "-f", sender, *rcpts, input=message)
    assert res.returncode == 0, res.stderr.decode(errors="replace")


def log_matches(d: Delivery, fragment: str) -> list[str]:
    return [line for line in d.lines() if fragment in line]


def make_maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def body_of(data: bytes) -> bytes:
    """The part after the header block."""
    _head, sep, body = data.partition(b"\n\n")
    assert sep, data[:200]
    return body


# -- (a) Postfix as the remote MX ----------------------------------------------


# the body of the message sent through Postfix: things an MTA may mangle
TRICKY_BODY = (
    b"First line.\n"
    b".a line starting with a dot\n"
    b"..two dots\n"
    b".\n"
    b"From the start of a line (mbox would quote this)\n"
    b"trailing spaces   \n"
    b"\ttab first\n"
    b"\n"
    b"\n"
    b"UTF-8: gr\xc3\xbc\xc3\x9fe, \xe2\x82\xac, \xf0\x9f\x93\xa8\n"
    + b"x" * 900
    + b"\n"
    + b"last line\n"
)


@pytest.fixture
def open_tmp():
    """A temp dir that other accounts can traverse (pytest's are 0700):
    Postfix and Dovecot run their processes as postfix / nobody."""
    top = Path(tempfile.mkdtemp(prefix="delivery-peer-", dir="/tmp"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.peer
def test_remote_delivery_to_real_postfix(instance, open_tmp):
    need_program("postfix", "postfix")
    if os.getuid() != 0:
        pytest.skip("a private Postfix needs root (it starts as root and drops to postfix)")
    pf = PrivatePostfix(open_tmp / "postfix", "peer.test", ["bob"])
    (instance.control / "smtproutes").write_text(f"peer.test:127.0.0.1:{pf.port}\n")
    d = None
    try:
        pf.start()
        d = Delivery(instance)
        message = (
            b"From: " + SENDER.encode() + b"\n"
            b"To: bob@peer.test\n"
            b"Subject: through a real Postfix\n"
            b"Message-ID: <peer-1@mx.example.test>\n"
            b"Date: Thu, 1 Jan 2026 00:00:00 +0000\n"
            b"\n" + TRICKY_BODY
        )
        send(instance, SENDER, "bob@peer.test", message=message)
        d.wait_for(lambda: queue_empty(instance) and log_matches(d, "end msg"), timeout=40)
        deadline = time.monotonic() + 30
        while not pf.delivered("bob") and time.monotonic() < deadline:
            time.sleep(0.1)
        got = pf.delivered("bob")
        assert len(got) == 1, pf.maillog()
        data = got[0].read_bytes()
        log = pf.maillog()
    finally:
        if d is not None:
            d.stop()
        pf.stop()
    assert body_of(data) == TRICKY_BODY
    head = data.partition(b"\n\n")[0]
    assert head.startswith(b"Return-Path: <" + SENDER.encode() + b">\n")
    assert b"\nDelivered-To: bob@peer.test\n" in head
    assert b"\nSubject: through a real Postfix\n" in head
    assert b"\nMessage-ID: <peer-1@mx.example.test>\n" in head
    # our queue's Received line travelled with the message
    assert b"\nReceived: indimail-mta queue " in head, head
    assert "to=<bob@peer.test>, relay=virtual" in log and "status=sent" in log, log
    # our side logged the success with Postfix's reply
    ok = log_matches(d, ": success: ")
    assert len(ok) == 1, d.lines()
    assert re.fullmatch(
        r"delivery \d+\.\d+: success: From:_<" + re.escape(SENDER) + r">_RCPT:_<bob@peer\.test>_"
        r"127\.0\.0\.1_accepted_message_-_Protocol_SMTP\./"
        r"Remote_host_said:_250_2\.0\.0_Ok:_queued_as_[0-9A-F]+/ queue\d",
        ok[0],
    ), ok[0]


# -- (b) Dovecot reads what qmail-local delivered ----------------------------------


def _doveadm(conf: Path, *args: str) -> str:
    doveadm = need_program("doveadm", "dovecot-core")
    res = subprocess.run([doveadm, "-c", str(conf), *args], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout.decode("utf-8", "replace")


@pytest.mark.peer
def test_dovecot_reads_our_maildir(instance, open_tmp):
    need_program("doveadm", "dovecot-core")
    dovecot_prog = need_program("dovecot", "dovecot-core")
    if os.getuid() != 0:
        pytest.skip("the private dovecot master is started as root here")
    # Dovecot refuses mail access as root and its processes must reach the
    # Maildir: the user's home is a traversable temp dir, not the instance.
    top = open_tmp
    dovecot = None
    d = None
    try:
        home = top / "alice"
        home.mkdir(mode=0o755)
        assign = instance.top / "etc" / "users" / "assign"
        lines = assign.read_text().splitlines()
        lines.insert(0, f"=alice:{ME}:{os.getuid()}:{os.getgid()}:{home}:::")
        assign.write_text("\n".join(lines) + "\n")
        assert instance.run("qmail-newu").returncode == 0
        make_maildir(home / "Maildir")
        (home / ".qmail").write_text("./Maildir/\n")

        d = Delivery(instance)
        subjects = [f"dovecot check {n}" for n in range(3)]
        for n, subject in enumerate(subjects):
            send(
                instance,
                SENDER,
                "alice@mx.example.test",
                message=f"Subject: {subject}\nFrom: {SENDER}\n\nbody {n}\n.\nend {n}\n".encode(),
            )
        d.wait_for(
            lambda: (
                queue_empty(instance)
                and len(list((home / "Maildir" / "new").iterdir())) == len(subjects)
            ),
            timeout=40,
        )
        d.stop()
        files = sorted((home / "Maildir" / "new").iterdir())
        file_sizes = sorted(p.stat().st_size for p in files)
        assert sorted(int(p.name.rsplit(",S=", 1)[1]) for p in files) == file_sizes

        uid, gid = os.getuid(), os.getgid()
        if uid == 0:  # mail access as root is refused: hand the Maildir to nobody
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for path in [home, *home.rglob("*")]:
                os.lchown(path, uid, gid)
        (top / "passwd").write_text(f"alice:{{PLAIN}}secret:{uid}:{gid}::{home}::\n")
        conf = top / "dovecot.conf"
        conf.write_text(
            f"base_dir = {top}/run\n"
            f"state_dir = {top}/state\n"
            f"log_path = {top}/dovecot.log\n"
            "protocols =\n"
            "ssl = no\n"
            "mail_location = maildir:~/Maildir\n"
            f"first_valid_uid = {min(uid, 500)}\n"
            f"passdb {{\n  driver = passwd-file\n  args = {top}/passwd\n}}\n"
            f"userdb {{\n  driver = passwd-file\n  args = {top}/passwd\n}}\n"
        )
        dovecot = subprocess.Popen(
            [dovecot_prog, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        socket_path = top / "run" / "auth-userdb"
        deadline = time.monotonic() + 20
        while not socket_path.exists() and time.monotonic() < deadline:
            assert dovecot.poll() is None, dovecot.stderr.read().decode()
            time.sleep(0.05)
        assert socket_path.exists(), "dovecot did not start"

        found = _doveadm(conf, "search", "-u", "alice", "mailbox", "INBOX", "all")
        assert len(found.split("\n")) - 1 == len(subjects), found
        fetched = _doveadm(
            conf,
            "fetch",
            "-u",
            "alice",
            "hdr body size.physical",
            "mailbox",
            "INBOX",
            "all",
        )
        log = (top / "dovecot.log").read_text(errors="replace")
    finally:
        if dovecot is not None:
            dovecot.terminate()
            try:
                dovecot.wait(timeout=15)
            except subprocess.TimeoutExpired:
                dovecot.kill()
                dovecot.wait()
        if d is not None:
            d.stop()

    for n, subject in enumerate(subjects):
        assert f"Subject: {subject}\n" in fetched
        assert f"body {n}\n.\nend {n}\n" in fetched
    assert fetched.count(f"Return-Path: <{SENDER}>\n") == len(subjects)
    assert fetched.count("Delivered-To: alice@mx.example.test\n") == len(subjects)
    # Dovecot's physical size is the file size our ,S= announced
    assert sorted(int(x) for x in _field_values(fetched, "size.physical")) == file_sizes
    assert "Error" not in log and "Panic" not in log, log


def _field_values(fetched: str, name: str) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in fetched.splitlines()
        if line.startswith(f"{name}:")
    ]


def test_smtp_peer_helper_undoes_dot_stuffing():
    """The helper itself: dot-stuffing and line ends undone, sessions recorded."""
    import smtplib

    with SmtpPeer() as peer, smtplib.SMTP(peer.ip, peer.port, timeout=10) as c:
        c.sendmail("a@x.test", ["b@y.test"], b"Subject: s\r\n\r\n.dot\r\n..two\r\n")
    assert peer.messages == [b"Subject: s\n\n.dot\n..two\n"]
    assert peer.sessions[0].commands[0].startswith("ehlo ")
