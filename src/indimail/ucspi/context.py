"""The connection an in-process program is serving (tcpserver's hand-off).

When tcpserver (or tcpclient, rblsmtpd) runs one of our commands in its
forked child instead of exec'ing it, it records the connection here before
calling the command.  A command such as qmail-smtpd asks::

    from indimail.ucspi import context
    conn = context.current() or context.from_fds()

and gets a :class:`Connection` (or None when fd 0 is not a socket, e.g. a
pipe in a test).  The contract, also written in ``docs/tcpserver.md``:

* ``conn.tls is None`` - plain connection.  fds 0/1 are the connection (as
  for an exec'd program) and ``conn.sock`` is a socket object for the same
  connection.  For STARTTLS the program reads the command, writes its 220
  reply, drops anything it had buffered after the command line, then calls
  ``conn.start_tls(ssl_context, timeout)`` and does all further I/O through
  the returned ``ssl.SSLSocket`` (also ``conn.tls``).
* ``conn.tls`` set - tcpserver already did the TLS handshake (``-n``/``-s``)
  and the command module declared ``UCSPI_TLS_AWARE = True``: all I/O goes
  through ``conn.tls``; fds 0/1 are ``/dev/null``.  ``TLS_PROVIDER`` is in
  the environment as for an exec'd program.
* A command without ``UCSPI_TLS_AWARE`` under a TLS tcpserver gets plain
  bytes on fds 0/1 through a relay process (exactly what an external program
  gets), ``conn.relayed`` is True and ``conn.sock`` is None; the environment
  has ``TLS_PROVIDER``, so the program knows the session is encrypted.

An exec'd program (the C way) has no context: ``context.current()`` is None
and :func:`from_fds` wraps fd 0 when it is a socket.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat


class Connection:
    """The client connection as tcpserver hands it over.  (A plain class,
    not a dataclass: ``dataclasses`` brings ``inspect`` and ``ast``, ~1.3 MB
    in every long-running process that imports it.)"""

    __slots__ = ("relayed", "sock", "tls", "tls_info")

    def __init__(
        self,
        sock: socket.socket | None,  # the TCP (or UNIX) socket of the client, None if relayed
        tls: ssl.SSLSocket | None = None,  # the TLS session, once there is one
        tls_info: str | None = None,  # "TLS Server=..., Client=..., Ciphers=..., bits=N"
        relayed: bool = False,  # fds 0/1 are a relay to a TLS session kept by tcpserver
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.tls_info = tls_info
        self.relayed = relayed

    def start_tls(self, ctx: ssl.SSLContext, timeout: float | None = 60.0) -> ssl.SSLSocket:
        """Server-side TLS handshake on the plain connection (STARTTLS)."""
        if self.sock is None:
            raise OSError("no socket to start TLS on (connection is relayed)")
        if self.tls is not None:
            raise OSError("TLS already active")
        self.sock.settimeout(timeout)
        tls = ctx.wrap_socket(self.sock, server_side=True)
        tls.settimeout(None)
        self.tls = tls
        cipher = tls.cipher() or ("?", "?", 0)
        self.tls_info = (
            f"TLS Server={tls.version()}, Client={tls.version()}, "
            f"Ciphers={cipher[0]}, bits={cipher[2]}"
        )
        return tls


_current: Connection | None = None


def current() -> Connection | None:
    """The connection tcpserver handed to this in-process program, or None."""
    return _current


def set_current(conn: Connection | None) -> None:
    global _current
    _current = conn


def from_fds(fd: int = 0) -> Connection | None:
    """A Connection over fd ``fd`` when it is a socket (exec'd program)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    return Connection(sock)
