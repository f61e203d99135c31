"""qmail-queued: the queue's door for injectors that cannot write the queue.

The original's ``qmail-queue`` is setuid ``qmailq``, so ``qmail-smtpd``
running as ``qmaild`` and any user's ``sendmail`` write queue files owned
by the queue.  A frozen Python binary must not be setuid; instead this
daemon runs as the queue's owner, listens on a local UNIX socket, and
queues what it is given with the caller's identity taken from the kernel
(``SO_PEERCRED``), so the Received line and the ``u``/``p`` records of
``intd`` say what the original's would.

Protocol, one message per connection (all lengths checked before use)::

    client: netstring(env) netstring(message) netstring(envelope)
    server: "0 <inode> <queuedir>\\n"  or  "<qmail-queue exit code> <reason>\\n"

``env`` is ``NAME=value`` records separated by NUL, restricted to
:data:`CLIENT_ENV`; ``envelope`` is the fd-1 form qmail-queue reads.
Nothing is acknowledged before ``enqueue`` has made the message durable.

Usage: ``qmail-queued [-c limit] [-s socket]``; started as root it creates
the socket's directory, binds, then becomes the queue's owner.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

from indimail.core import paths as _paths
from indimail.queue import codes
from indimail.queue.door import CHUNK, CLIENT_ENV, TIMEOUT, socket_path
from indimail.queue.layout import Layout
from indimail.queue.qmail_multi import check_min_free, choose_queue
from indimail.queue.qmail_queue import (
    QueueError,
    enqueue,
    parse_envelope,
)

ENV_LIMIT = 64 * 1024
ENVELOPE_LIMIT = 16 * 1024 * 1024
CONNECTIONS = 64


# -- server side ------------------------------------------------------------


class _Session:
    """Reads the client's netstrings with every length bounded."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.conn.recv(CHUNK)
        if not chunk:
            raise QueueError(codes.READ_ERR, "trouble reading from client: connection closed")
        self.buf += chunk

    def length(self, limit: int) -> int:
        while b":" not in self.buf[:21]:
            if len(self.buf) > 20 or (self.buf and not self.buf.isdigit()):
                raise QueueError(codes.ENVELOPE_FMT_ERR, "protocol error: bad netstring length")
            self._fill()
        digits, _, self.buf = self.buf.partition(b":")
        if not digits.isdigit():
            raise QueueError(codes.ENVELOPE_FMT_ERR, "protocol error: bad netstring length")
        n = int(digits)
        if n > limit:
            raise QueueError(codes.ENVELOPE_FMT_ERR, f"protocol error: field of {n} bytes")
        return n

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def comma(self) -> None:
        if self.exactly(1) != b",":
            raise QueueError(codes.ENVELOPE_FMT_ERR, "protocol error: netstring without comma")

    def netstring(self, limit: int) -> bytes:
        data = self.exactly(self.length(limit))
        self.comma()
        return data


class _Body:
    """The message netstring as a file for ``enqueue``: exactly n bytes."""

    def __init__(self, session: _Session, n: int) -> None:
        self.s = session
        self.left = n

    def read(self, size: int = CHUNK) -> bytes:
        if self.left == 0:
            return b""
        if not self.s.buf:
            try:
                self.s._fill()
            except QueueError:
                raise OSError(0, "client went away in the middle of the message") from None
        data = self.s.buf[: min(size, self.left)]
        self.s.buf = self.s.buf[len(data) :]
        self.left -= len(data)
        return data


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the connecting process, from the kernel."""
    if hasattr(socket, "SO_PEERCRED"):
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
        return pid, uid
    # BSD and macOS: LOCAL_PEERCRED gives a struct xucred (version, uid, ...)
    local_peercred = getattr(socket, "LOCAL_PEERCRED", 1)
    raw = conn.getsockopt(0, local_peercred, 256)
    _version, uid = struct.unpack_from("Ii", raw)
    return 0, uid


def handle(conn: socket.socket, allowed: list[Path], environ: Mapping[str, str]) -> bytes:
    """Serve one client; return the reply line that was sent."""
    try:
        conn.settimeout(TIMEOUT)
        pid, uid = peer_credentials(conn)
        session = _Session(conn)
        client = _client_env(session.netstring(ENV_LIMIT))
        env = dict(environ)
        for k in CLIENT_ENV:
            env.pop(k, None)
        p = _paths.get()
        queuedir = Path(client.pop("QUEUEDIR", "") or choose_queue(env, p))
        if queuedir not in allowed:
            raise QueueError(codes.CHDIR, f"{queuedir} is not one of this system's queues")
        env.update(client)
        check_min_free(queuedir, env)
        n = session.length(sys.maxsize)
        layout = Layout(root=queuedir, split=p.conf_split, bigtodo=p.bigtodo)

        def envelope():  # type: ignore[no-untyped-def]
            session.comma()
            data = session.netstring(ENVELOPE_LIMIT)
            return parse_envelope(data)

        inode = enqueue(
            layout,
            _Body(session, n),  # type: ignore[arg-type]
            envelope,
            pid=pid,
            uid=uid,
            environ=env,
        )
        reply = b"0 %d %s\n" % (inode, os.fsencode(queuedir))
    except QueueError as exc:
        reply = b"%d %s\n" % (exc.code, exc.reason.encode("utf-8", "replace"))
    except TimeoutError:
        reply = b"%d qmail-queued: client timed out\n" % codes.TIMEOUT
    except OSError as exc:
        reply = b"%d trouble reading from client: %s\n" % (
            codes.READ_ERR,
            (exc.strerror or str(exc)).encode(),
        )
    try:
        conn.sendall(reply)
    except OSError:
        pass
    return reply


def _client_env(block: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for rec in block.split(b"\0") if block else ():
        name, sep, value = rec.partition(b"=")
        key = name.decode("ascii", "replace")
        if not sep or key not in CLIENT_ENV:
            raise QueueError(codes.ENVELOPE_FMT_ERR, f"protocol error: variable {key!r} refused")
        env[key] = value.decode("utf-8", "surrogateescape")
    return env


def _usage() -> int:
    os.write(2, b"usage: qmail-queued [-c limit] [-s socket]\n")
    return 100


def main(argv: list[str]) -> int:
    import getopt
    import grp  # noqa: F401 - imported before privileges are dropped
    import pwd  # noqa: F401
    import selectors
    import signal
    import threading

    from indimail.core.errors import Fatal

    try:
        opts, rest = getopt.getopt(argv[1:], "c:s:")
    except getopt.GetoptError as exc:
        os.write(2, f"qmail-queued: {exc.msg}\n".encode())
        return _usage()
    if rest:
        return _usage()
    environ = os.environ
    p = _paths.get()
    limit = CONNECTIONS
    path = Path(socket_path(p, environ))
    for opt, val in opts:
        if opt == "-c":
            if not val.isdecimal() or int(val) < 1:
                raise Fatal(100, f"-c {val}: not a positive number")
            limit = int(val)
        else:
            path = Path(val)
    allowed = p.queue_dirs()
    if not allowed:
        raise Fatal(111, "no queues configured (QUEUE_COUNT)")
    listener = _listen(path, p)
    os.umask(0o033)
    threading.stack_size(512 * 1024)  # sessions are shallow; softlimit -m stays honest
    slots = threading.BoundedSemaphore(limit)
    stop = threading.Event()

    def on_term(_sig: int, _frame: object) -> None:
        stop.set()

    # a signal must end the wait at once: Python retries an interrupted
    # select with what is left of its timeout, so the handler alone would
    # leave svscan's TERM unanswered for up to a second
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.write(2, f"qmail-queued: listening on {path}, {len(allowed)} queues\n".encode())

    def worker(conn: socket.socket) -> None:
        try:
            reply = handle(conn, allowed, environ)
            if not reply.startswith(b"0 "):
                os.write(2, b"qmail-queued: refused: " + reply)
        finally:
            conn.close()
            slots.release()

    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while not stop.is_set():
        ready = [key.fd for key, _ in sel.select()]
        if wake_r in ready:
            _drain(wake_r)
        if listener.fileno() not in ready or stop.is_set():
            continue
        if not slots.acquire(timeout=1.0):
            continue
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            slots.release()
            continue
        except OSError as exc:
            slots.release()
            os.write(2, f"qmail-queued: accept: {exc.strerror}\n".encode())
            continue
        conn.setblocking(True)
        threading.Thread(target=worker, args=(conn,), daemon=True).start()
    listener.close()
    # finish what was accepted: every slot back means every session ended
    for _ in range(limit):
        slots.acquire(timeout=TIMEOUT)
    try:
        os.unlink(path)
    except OSError:
        pass
    return 0


def _drain(fd: int) -> None:
    """Empty the signal wake-up pipe (its bytes only say a signal came)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _listen(path: Path, p: _paths.Paths) -> socket.socket:
    """Bind the socket (anyone may connect, as anyone may run qmail-queue);
    as root, make its directory and then become the queue's owner."""
    from indimail.core.errors import Fatal

    root = os.geteuid() == 0
    try:
        os.makedirs(path.parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise Fatal(111, f"unable to mkdir {path.parent}: {exc.strerror}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Fatal(111, f"unable to remove old {path}: {exc.strerror}") from None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        os.chmod(path, 0o666)
        s.listen(128)
    except OSError as exc:
        s.close()
        raise Fatal(111, f"unable to listen on {path}: {exc.strerror}") from None
    s.setblocking(False)
    if root:
        import grp
        import pwd

        try:
            uid = pwd.getpwnam(p.user("qmailq")).pw_uid
            gid = grp.getgrnam(p.group("qmail")).gr_gid
        except KeyError as exc:
            raise Fatal(111, f"unknown user or group {exc}") from None
        try:
            os.chown(path, uid, gid)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as exc:
            raise Fatal(111, f"unable to become {p.user('qmailq')}: {exc.strerror}") from None
    return s
