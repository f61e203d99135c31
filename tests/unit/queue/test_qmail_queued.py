"""qmail-queued: a user who cannot write the queue queues through the daemon.

The original's qmail-queue is setuid qmailq; ours is this door.  The test
runs as root (as CI does): the queue belongs to ``daemon``, the daemon is
started as root and drops to it, clients run as ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from indimail.core import paths
from indimail.queue import qmail_queue, qmail_queued, submit
from support import INDIMAIL, make_instance

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")

MESSAGE = b"Subject: door\n\nthrough the door\n"


@pytest.fixture
def door():
    top = Path(tempfile.mkdtemp(prefix="queued-", dir="/tmp"))
    os.chmod(top, 0o755)
    inst = make_instance(top / "i", queues=2)
    owner = pwd.getpwnam("daemon")
    with open(inst.conf, "a") as fh:
        fh.write("USER_QMAILQ=daemon\nGROUP_QMAIL=daemon\n")
    env = {**os.environ, "INDIMAIL_PATHS": str(inst.conf)}
    p = paths.load(env)
    for q in p.queue_dirs():
        subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(q)], check=True)
    sock = qmail_queued.socket_path(p, env)
    server = subprocess.Popen(
        [str(INDIMAIL), "qmail-queued"], env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        line = server.stderr.readline()
        assert b"listening on " + os.fsencode(sock) in line, line
        yield p, env, sock, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(top, ignore_errors=True)


def as_nobody(env: dict[str, str], work) -> tuple[int, bytes]:
    """Run ``work()`` in a child switched to nobody; return (pid, its bytes)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = b"crash"
        try:
            os.close(r)
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.environ.clear()
            os.environ.update(env)
            paths.reload()
            out = work()
        except BaseException as exc:  # reported to the parent, which asserts
            out = f"exception {type(exc).__name__}: {exc}".encode()
        finally:
            os.write(w, out)
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return pid, b"".join(chunks)


def queued_files(p: paths.Paths) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for q in p.queue_dirs():
        for sub in ("pid", "mess", "intd", "todo"):
            found.setdefault(sub, []).extend(f for f in (q / sub).rglob("*") if f.is_file())
    return found


def test_submit_as_nobody_goes_through_the_door(door):
    p, env, _sock, _server = door

    def work() -> bytes:
        q = submit.submit(MESSAGE, b"a@example.test", [b"b@example.org"], environ=os.environ)
        return f"{q.inode} {q.queuedir}".encode()

    pid, out = as_nobody(env, work)
    inode_s, _, queuedir = out.decode().partition(" ")
    assert inode_s.isdigit(), out
    mess = Path(queuedir) / "mess" / str(int(inode_s) % p.conf_split) / inode_s
    st = mess.stat()
    assert st.st_uid == pwd.getpwnam("daemon").pw_uid
    data = mess.read_bytes()
    nobody = pwd.getpwnam("nobody").pw_uid
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"Received: indimail-mta queue %d by host " % pid)
    assert rest.startswith(b" (invoked by uid %d); " % nobody)
    assert data.endswith(b"\n" + MESSAGE)
    todo = Path(queuedir) / "todo" / inode_s
    assert todo.read_bytes() == b"u%d\0p%d\0Fa@example.test\0Tb@example.org\0" % (nobody, pid)
    assert queued_files(p)["pid"] == []


def test_qmail_queue_command_as_nobody(door, tmp_path):
    """``qmail-queue`` run by a user: message from a pipe on fd 0, envelope on fd 1."""
    p, env, _sock, _server = door
    envelope = b"Fme@example.test\0Tyou@example.org\0Tthem@example.org\0\0"

    efile = tmp_path / "envelope.in"
    efile.write_bytes(envelope)

    def work() -> bytes:
        r, w = os.pipe()
        os.write(w, MESSAGE)
        os.close(w)
        os.dup2(r, 0)
        fd = os.open(efile_copy, os.O_RDONLY)
        os.dup2(fd, 1)
        os.close(fd)
        return str(qmail_queue.main(["qmail-queue"])).encode()

    efile_copy = p.queue_base.parent.parent / "envelope.in"  # nobody cannot enter tmp_path
    efile_copy.write_bytes(efile.read_bytes())
    _pid, out = as_nobody(env, work)
    assert out == b"0"
    files = queued_files(p)
    assert len(files["todo"]) == 1
    data = files["mess"][0].read_bytes()
    assert data.endswith(b"\n" + MESSAGE)
    assert (
        files["todo"][0]
        .read_bytes()
        .endswith(b"Fme@example.test\0Tyou@example.org\0Tthem@example.org\0")
    )


def raw_session(sock: Path, payload: bytes, *, close_early: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(sock))
    s.sendall(payload)
    if close_early:
        s.close()
        return b""
    s.shutdown(socket.SHUT_WR)
    reply = s.recv(4096)
    s.close()
    return reply


def test_bad_clients_queue_nothing(door):
    p, _env, sock, server = door
    assert raw_session(sock, b"garbage").startswith(b"79 protocol error")
    assert raw_session(sock, b"0:,99999999999999999999999:").startswith(b"79 protocol error")
    assert raw_session(sock, b"7:PATH=/x,1:a,2:F\0,").startswith(b"79 protocol error")
    assert raw_session(sock, b"15:QUEUEDIR=/tmp/x,1:a,").startswith(b"61 /tmp/x is not one")
    # message cut short: the connection closes in the middle of it
    assert raw_session(sock, b"0:,1000:Subject: x\n\npartial").startswith(b"54 ")
    raw_session(sock, b"0:,1000:Subject: x\n\npartial", close_early=True)
    # a complete message with a broken envelope
    assert raw_session(sock, b"0:,1:a,3:Xab,").startswith(b"79 envelope format error")
    time.sleep(0.2)
    assert server.poll() is None
    files = queued_files(p)
    assert files == {"pid": [], "mess": [], "intd": [], "todo": []}


def test_no_daemon_is_a_temporary_error(door):
    _p, env, sock, server = door
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    # the socket may stay (its directory is root's): nobody answers on it

    def work() -> bytes:
        try:
            submit.submit(MESSAGE, b"a@example.test", [b"b@example.org"], environ=os.environ)
        except submit.SubmitError as exc:
            return f"{exc.code}|{exc.text}|{exc.reason}".encode()
        return b"queued?"

    _pid, out = as_nobody(env, work)
    code, text, reason = out.decode().split("|")
    assert code == "60"
    assert text.startswith("Zqq trouble creating pipes/sockets")
    assert str(sock) in reason and "qmail-queued" in reason


def test_client_without_queuedir_gets_one_of_the_queues(door):
    p, _env, sock, _server = door
    msg = b"Subject: raw\n\nno queue named\n"
    env = b"Fa@example.test\0Tb@example.org\0\0"
    reply = raw_session(sock, b"0:,%d:%s,%d:%s," % (len(msg), msg, len(env), env))
    code, inode, queuedir = reply.rstrip(b"\n").split(b" ", 2)
    assert code == b"0" and inode.isdigit(), reply
    assert Path(os.fsdecode(queuedir)) in p.queue_dirs()
    assert (Path(os.fsdecode(queuedir)) / "todo" / inode.decode()).is_file()


def test_term_while_idle_ends_the_daemon_at_once(door):
    # svscan's TERM must be answered now, not when a poll timeout runs out
    # (qmailctl shut waits for the service, and the old loop took up to 1 s)
    _, _, sock, server = door
    assert os.path.exists(sock)
    time.sleep(0.1)  # in its wait for a client
    start = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    took = time.monotonic() - start
    assert took < 0.6, f"{took:.2f} s from TERM to exit"
