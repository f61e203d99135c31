"""The client side of qmail-queued: how a user who cannot write the queue
queues a message (sendmail, qmail-inject, qmail-queue run by a user).

The protocol is :mod:`indimail.queue.qmail_queued`'s::

    client: netstring(env) netstring(message) netstring(envelope)
    server: "0 <inode> <queuedir>\\n"  or  "<qmail-queue exit code> <reason>\\n"

This runs once per message in a short-lived command, so it stays light: the
C half of ``socket`` (the Python half imports enum), no pathlib, no
tempfile unless a pipe must be measured first.
"""

from __future__ import annotations

import _socket
import os

from indimail.queue import codes
from indimail.queue.qmail_queue import QueueError, envelope_bytes

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import BinaryIO

    from indimail.core.paths import Paths, Places

# Variables of the caller that qmail-queue would have read from its env.
CLIENT_ENV = ("QQEH", "FASTQUEUE", "HIDE_HOST", "TCPREMOTEIP", "QUEUEDIR")
TIMEOUT = 1200  # seconds of silence before a session is dropped
CHUNK = 65536
REPLY_MAX = 4096


def socket_path(p: Paths | Places, environ: Mapping[str, str]) -> str:
    """``QUEUE_SOCKET``, else ``RUNDIR/indimail/qmail-queued.sock``."""
    return environ.get("QUEUE_SOCKET") or f"{p.rundir}/indimail/qmail-queued.sock"


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def submit_via_socket(
    sock_path: str | Path,
    queuedir: str | Path,
    message: bytes | BinaryIO | int,
    sender: bytes,
    recipients: tuple[bytes, ...] | list[bytes],
    environ: Mapping[str, str],
) -> tuple[int, str]:
    """Queue through qmail-queued; return (inode, queuedir) or raise QueueError."""
    env = {k: environ[k] for k in CLIENT_ENV if environ.get(k)}
    env["QUEUEDIR"] = os.fspath(queuedir)
    env_block = b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items())
    spool = None
    try:
        if isinstance(message, bytes | bytearray | memoryview):
            body: bytes | int = bytes(message)
            length = len(body)
        else:
            fd, length, spool = sized_fd(message)
            body = fd
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(TIMEOUT)
            try:
                s.connect(os.fspath(sock_path))
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
                s.shutdown(_socket.SHUT_WR)
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
    return int(inode_s), os.fsdecode(qd) if qd else os.fspath(queuedir)


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
    import tempfile

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


def _send_fd(s: _socket.socket, fd: int, length: int) -> None:
    left = length
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            raise QueueError(codes.READ_ERR, "trouble reading message: it shrank while queueing")
        s.sendall(chunk)
        left -= len(chunk)


def _recv_reply(s: _socket.socket) -> bytes:
    buf = b""
    while len(buf) < REPLY_MAX and not buf.endswith(b"\n"):
        chunk = s.recv(REPLY_MAX)
        if not chunk:
            break
        buf += chunk
    return buf
