"""The network side of qmail-smtpd (and qmtpd/qmqpd): a small I/O layer.

The protocol code sees one :class:`Conn` with ``recv``/``send`` and a
timeout; whether bytes travel over plain file descriptors (fd 0 in, fd 1
out, as under tcpserver or in tests over a socketpair), a socket, or a TLS
socket does not matter to it.

Seams for tcpserver:

* :func:`register_connection` — a caller running ``main()`` in-process
  may hand its (possibly already-TLS) socket here first;
  :func:`registered_connection` returns it (or ``None``).
* :func:`plain` builds the connection: the registered one, else the TLS
  session tcpserver handed over through :mod:`indimail.ucspi.context`
  (tcpserver ``-n``/``-s`` with qmail-smtpd in-process), else fds 0/1.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import stat

_registered: object | None = None


def register_connection(conn: object | None) -> None:
    """tcpserver: the connection (a socket, possibly ``ssl.SSLSocket``) to use."""
    global _registered
    _registered = conn


def registered_connection() -> object | None:
    """The connection set with :func:`register_connection`, if any."""
    return _registered


class ConnTimeout(Exception):
    """No byte could be read or written within the timeout."""


class ConnClosed(Exception):
    """The peer went away (EOF or a reset)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Conn:
    """Base: ``recv``, ``send``, and what TLS says about itself."""

    timeout: float = 1200.0
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int | None = None

    def recv(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def send(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def socket_fd(self) -> int | None:
        """The fd of a socket usable for STARTTLS, or None."""
        return None

    def close(self) -> None:
        pass


class FdConn(Conn):
    """Reads fd ``rfd``, writes fd ``wfd`` with poll() timeouts."""

    def __init__(self, rfd: int = 0, wfd: int = 1, timeout: float = 1200.0) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.timeout = timeout
        self._pollers: dict[tuple[int, int], select.poll] = {}

    def _wait(self, fd: int, event: int) -> None:
        # one poll object per (fd, event) for the whole session; poll()
        # itself resumes after a signal with the time left (PEP 475)
        poller = self._pollers.get((fd, event))
        if poller is None:
            poller = self._pollers[(fd, event)] = select.poll()
            poller.register(fd, event)
        if not poller.poll(max(self.timeout, 0.001) * 1000):
            raise ConnTimeout()

    def recv(self, n: int) -> bytes:
        self._wait(self.rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            data = os.read(self.rfd, n)
        except ConnectionResetError:
            raise ConnClosed("connection with client terminated") from None
        except OSError as exc:
            raise ConnClosed(f"read error: {os.strerror(exc.errno or 0)}") from None
        if not data:
            raise ConnClosed("client dropped connection")
        return data

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.wfd, select.POLLOUT)
            try:
                n = os.write(self.wfd, view)
            except BlockingIOError:  # pragma: no cover
                continue
            except OSError as exc:
                raise ConnClosed(f"write error: {os.strerror(exc.errno or 0)}") from None
            view = view[n:]

    def socket_fd(self) -> int | None:
        try:
            if stat.S_ISSOCK(os.fstat(self.rfd).st_mode):
                return self.rfd
        except OSError:
            return None
        return None


class SockConn(Conn):
    """A socket (plain or ``ssl.SSLSocket``) with a timeout."""

    def __init__(self, sock: socket.socket, timeout: float = 1200.0) -> None:
        self.sock = sock
        self.timeout = timeout
        if isinstance(sock, ssl.SSLSocket):
            self.tls_version = sock.version()
            cipher = sock.cipher()
            if cipher:
                self.tls_cipher = cipher[0]
                self.tls_bits = cipher[2]

    def recv(self, n: int) -> bytes:
        self.sock.settimeout(self.timeout)
        try:
            data = self.sock.recv(n)
        except TimeoutError:
            raise ConnTimeout() from None
        except ssl.SSLError as exc:
            raise ConnClosed(f"connection with client terminated: {exc.reason}") from None
        except OSError as exc:
            raise ConnClosed(f"read error: {os.strerror(exc.errno or 0)}") from None
        if not data:
            raise ConnClosed("client dropped connection")
        return data

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ConnTimeout() from None
        except (ssl.SSLError, OSError) as exc:
            raise ConnClosed(f"write error: {exc}") from None

    def socket_fd(self) -> int | None:
        if isinstance(self.sock, ssl.SSLSocket):
            return None
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def plain(timeout: float) -> Conn:
    """The connection main() starts with.

    In order: one registered with :func:`register_connection`; the TLS
    session tcpserver handed over (``ucspi.context.current().tls``, when it
    did the handshake itself and runs us in-process); else fds 0/1.
    """
    reg = registered_connection()
    if reg is not None:
        if isinstance(reg, Conn):
            reg.timeout = timeout
            return reg
        return SockConn(reg, timeout)  # type: ignore[arg-type]
    from indimail.ucspi import context

    handed = context.current()
    if handed is not None and handed.tls is not None:
        return SockConn(handed.tls, timeout)
    return FdConn(0, 1, timeout)


def start_tls(conn: Conn, ctx: ssl.SSLContext) -> SockConn:
    """Server side TLS handshake on ``conn``'s socket; raises OSError/ssl.SSLError."""
    fd = conn.socket_fd()
    if fd is None:
        raise OSError(errno.ENOTSOCK, "connection is not a socket")
    sock = socket.socket(fileno=os.dup(fd))
    sock.settimeout(conn.timeout)
    try:
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except BaseException:
        sock.close()
        raise
    return SockConn(tls, conn.timeout)


class LineTooLong(Exception):
    """A command line exceeded the limit before its newline arrived."""


class Input:
    """Buffered input with bounded lines; flushes ``output`` before blocking."""

    CHUNK = 16384

    def __init__(self, conn: Conn, flush) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.flush = flush

    def fill(self) -> None:
        self.flush()
        self.buf += self.conn.recv(self.CHUNK)

    def readline(self, limit: int) -> bytes:
        """One line without its LF (a trailing CR is kept); bounded by ``limit``."""
        start = 0
        for _ in range(1 << 30):  # each round reads at least one byte
            i = self.buf.find(b"\n", start)
            if i >= 0:
                if i > limit:
                    raise LineTooLong()
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise LineTooLong()
            start = len(self.buf)
            self.fill()
        raise LineTooLong()  # pragma: no cover

    def take(self) -> bytes:
        """Whatever is buffered, else what one read brings."""
        if not self.buf:
            self.fill()
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def push_back(self, data: bytes) -> None:
        self.buf[:0] = data

    def discard(self) -> None:
        self.buf.clear()


class Output:
    """Buffered replies, flushed before every blocking read."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 65536:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self.conn.send(data)
