"""qmail-qmqpc: a qmail-queue that hands the message to a QMQP server.

Reads the message on fd 0 and the envelope (``F<sender>\\0T<rcpt>\\0...\\0``)
on fd 1, as qmail-queue does, and sends them as one QMQP package to the
servers given as arguments or listed in control ``qmqpservers`` (IP
addresses; with the file's sticky bit set the first one tried is
``time mod n``).  Exit codes are qmail-queue's: 0 queued, 31 refused
permanently, 71 refused temporarily, 72/73 connect timeout/refused (last
error), 74 connection trouble, 55 control trouble, 54 read error, 79 bad
envelope.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tempfile
import time

from indimail.core import control
from indimail.core import paths as _paths

PORT_QMQP = 628
MAX_ENVELOPE = 10 * 1024 * 1024
ADDR_MAX = 1003


def read_envelope(fd: int) -> tuple[bytes, list[bytes]]:
    """Parse the envelope on ``fd``; raise SystemExit(79/54) as qmail-queue."""
    data = bytearray()
    for _ in range(MAX_ENVELOPE // 4096 + 2):
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            raise SystemExit(54) from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_ENVELOPE:
            raise SystemExit(79)
    fields = bytes(data).split(b"\0")
    if len(fields) < 3 or fields[-1] != b"" or fields[-2] != b"":
        raise SystemExit(79)
    fields = fields[:-2]
    if not fields[0].startswith(b"F"):
        raise SystemExit(79)
    sender = fields[0][1:]
    rcpts = []
    for f in fields[1:]:
        if not f.startswith(b"T") or len(f) < 2:
            raise SystemExit(79)
        rcpts.append(f[1:])
    if len(sender) >= ADDR_MAX or any(len(r) >= ADDR_MAX for r in rcpts):
        raise SystemExit(11)
    return sender, rcpts


def _ns_header(n: int) -> bytes:
    return str(n).encode() + b":"


def send_one(
    server: str, msg, msglen: int, after: bytes, port: int, tconn: int, tremote: int, outip: str
) -> int | None:
    """Try one server: exit code when it answered, None to try the next."""
    try:
        ip = ipaddress.ip_address(server)
    except ValueError:
        return None
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if outip and outip not in ("0.0.0.0", "::"):
            sock.bind((outip, 0))
        sock.settimeout(tconn)
        try:
            sock.connect((server, port))
        except TimeoutError:
            send_one.lasterror = 72  # type: ignore[attr-defined]
            return None
        except OSError:
            send_one.lasterror = 73  # type: ignore[attr-defined]
            return None
        sock.settimeout(tremote)
        before = _ns_header(msglen)
        total = len(before) + msglen + len(after)
        try:
            sock.sendall(_ns_header(total) + before)
            msg.seek(0)
            for _ in range(msglen // 65536 + 2):
                chunk = msg.read(65536)
                if not chunk:
                    break
                sock.sendall(chunk)
            sock.sendall(after + b",")
            for _ in range(64):  # the reply's length digits and ':' come first
                b = sock.recv(1)
                if not b:
                    return 74
                if b == b"K":
                    return 0
                if b == b"Z":
                    return 71
                if b == b"D":
                    return 31
            return 74
        except OSError:
            return 74
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    p = _paths.get()
    cd = p.controldir
    try:
        servers = argv[1:] or control.read_list("qmqpservers", controldir=cd)
        tremote = control.read_int("timeoutremote", 60, controldir=cd)
        tconn = control.read_int("timeoutconnect", 10, controldir=cd)
    except control.ControlError:
        return 55
    if not servers:
        return 55
    with tempfile.TemporaryFile() as msg:
        for _ in range(1 << 40):
            try:
                chunk = os.read(0, 65536)
            except OSError:
                return 54
            if not chunk:
                break
            msg.write(chunk)
        msglen = msg.tell()
        sender, rcpts = read_envelope(1)
        after = b"," + _ns(sender) + b"".join(_ns(r) for r in rcpts)
        outip = os.environ.get("OUTGOINGIP") or ""
        if not outip:
            try:
                outip = control.read_line("outgoingip", controldir=cd) or ""
            except control.ControlError:
                return 55
        try:
            port = int(os.environ.get("PORT_QMQP", PORT_QMQP))
        except ValueError:
            port = PORT_QMQP
        start = 0
        if len(argv) == 1:
            try:
                if os.stat(cd / "qmqpservers").st_mode & stat.S_ISVTX:
                    start = int(time.time()) % len(servers)
            except OSError:
                return 55
        send_one.lasterror = 55  # type: ignore[attr-defined]
        order = servers[start:] + servers[:start]
        for server in order:
            code = send_one(server, msg, msglen, after, port, tconn, tremote, outip)
            if code is not None:
                return code
        return send_one.lasterror  # type: ignore[attr-defined]


def _ns(b: bytes) -> bytes:
    return str(len(b)).encode() + b":" + b + b","
