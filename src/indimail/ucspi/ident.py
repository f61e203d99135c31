"""IDENT (RFC 1413) lookup for $TCPREMOTEINFO, bounded by a timeout."""

from __future__ import annotations

import socket
import time

MAX_REPLY = 1024
MAX_INFO = 256


def remote_info(
    local_ip: str, local_port: int, remote_ip: str, remote_port: int, timeout: float
) -> str | None:
    """The user name the client's identd gives, or None on any failure."""
    if timeout <= 0:
        return None
    family = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((local_ip, 0))
            s.connect((remote_ip, 113))
            s.sendall(f"{remote_port} , {local_port}\r\n".encode())
            reply = bytearray()
            while b"\n" not in reply and len(reply) < MAX_REPLY:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                s.settimeout(left)
                data = s.recv(MAX_REPLY - len(reply))
                if not data:
                    return None
                reply += data
    except OSError:
        return None
    if b"\n" not in reply:
        return None
    out = bytearray()
    colons = 0
    for ch in reply[: reply.index(b"\n")]:
        if ch in b" \t\r":
            continue
        if colons < 3:
            if ch == 0x3A:
                colons += 1
            continue
        out.append(ch)
        if len(out) > MAX_INFO:
            break
    return out.decode("utf-8", "surrogateescape")
