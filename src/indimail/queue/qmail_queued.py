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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from indimail.core import paths as _paths
from indimail.queue import codes
from indimail.queue.layout import Layout
from indimail.queue.qmail_multi import check_min_free, choose_queue
from indimail.queue.qmail_queue import (
    QueueError,
    enqueue,
    envelope_bytes,
    parse_envelope,
)

# Variables of the caller that qmail-queue would have read from its env.
CLIENT_ENV = ("QQEH", "FASTQUEUE", "HIDE_HOST", "TCPREMOTEIP", "QUEUEDIR")
ENV_LIMIT = 64 * 1024
ENVELOPE_LIMIT = 16 * 1024 * 1024
TIMEOUT = 1200  # seconds of silence before a session is dropped
CONNECTIONS = 64
CHUNK = 65536


def socket_path(p: _paths.Paths, environ: Mapping[str, str]) -> Path:
    """``QUEUE_SOCKET``, else ``RUNDIR/indimail/qmail-queued.sock``."""
    override = environ.get("QUEUE_SOCKET")
    if override:
        return Path(override)
    return p.rundir / "indimail" / "qmail-queued.sock"


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


# -- client side ------------------------------------------------------------


def submit_via_socket(
    sock_path: Path,
    queuedir: Path,
    message: bytes | BinaryIO | int,
    sender: bytes,
    recipients: tuple[bytes, ...] | list[bytes],
    environ: Mapping[str, str],
) -> tuple[int, Path]:
    """Queue through qmail-queued; return (inode, queuedir) or raise QueueError."""
    env = {k: environ[k] for k in CLIENT_ENV if environ.get(k)}
    env["QUEUEDIR"] = str(queuedir)
    env_block = b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items())
    spool = None
    try:
        if isinstance(message, bytes | bytearray | memoryview):
            body: bytes | int = bytes(message)
            length = len(body)
        else:
            fd, length, spool = sized_fd(message)
            body = fd
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(TIMEOUT)
            try:
                s.connect(str(sock_path))
            except OSError as exc:
                raise QueueError(
                    codes.PIPE_SOCKET,
                    f"the queue belongs to another user and qmail-queued is not answering "
                    f"on {sock_path}: {exc.strerror}",
                ) from None
            try:
                s.sendall(netstring(env_block) + b"%d:" % length)
                if isinstance(body, bytes):
                    s.sendall(body)
                else:
                    _send_fd(s, body, length)
                s.sendall(b"," + netstring(envelope_bytes(sender, recipients)))
                s.shutdown(socket.SHUT_WR)
                reply = _recv_reply(s)
            except OSError as exc:
                raise QueueError(
                    codes.PIPE_SOCKET, f"trouble talking to qmail-queued: {exc.strerror or exc}"
                ) from None
        finally:
            s.close()
    finally:
        if spool is not None:
            spool.close()
    code_s, _, rest = reply.rstrip(b"\n").partition(b" ")
    if not code_s.isdigit():
        raise QueueError(codes.CRASHED, "qmail-queued closed the connection without a reply")
    code = int(code_s)
    if code != 0:
        raise QueueError(code, rest.decode("utf-8", "replace"))
    inode_s, _, qd = rest.partition(b" ")
    return int(inode_s), Path(os.fsdecode(qd)) if qd else queuedir


def sized_fd(message: BinaryIO | int) -> tuple[int, int, BinaryIO | None]:
    """An fd positioned at the message and its length; spool a pipe first."""
    import stat

    try:
        if isinstance(message, int):
            fd = message
            pos = os.lseek(fd, 0, os.SEEK_CUR)
        else:
            pos = message.tell()  # the logical position, not the buffered fd's
            if message.writable():
                message.flush()
            fd = message.fileno()
            os.lseek(fd, pos, os.SEEK_SET)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, st.st_size - pos, None
    except (OSError, ValueError):
        pass  # a pipe, or a file object without an fd: copy it
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    try:
        while True:
            chunk = os.read(message, CHUNK) if isinstance(message, int) else message.read(CHUNK)
            if not chunk:
                break
            spool.write(chunk)
    except OSError as exc:
        spool.close()
        raise QueueError(codes.READ_ERR, f"trouble reading message: {exc.strerror}") from None
    spool.flush()
    length = spool.tell()
    spool.seek(0)
    return spool.fileno(), length, spool


def _send_fd(s: socket.socket, fd: int, length: int) -> None:
    left = length
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            raise QueueError(codes.READ_ERR, "trouble reading message: it shrank while queueing")
        s.sendall(chunk)
        left -= len(chunk)


def _recv_reply(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 4096 and not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


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
    path = socket_path(p, environ)
    for opt, val in opts:
        if opt == "-c":
            if not val.isdigit() or int(val) < 1:
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
    while not stop.is_set():
        if not sel.select(timeout=1.0):
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
