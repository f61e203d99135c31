"""Netstrings (``<len>:<bytes>,``) read from the network, bounded.

Lengths are parsed digit by digit and capped before anything is read or
allocated; payloads are copied in chunks to a sink.  Also the Received
line shared by qmail-smtpd, qmail-qmtpd and qmail-qmqpd (received.c).
"""

from __future__ import annotations

from collections.abc import Callable

from indimail.core.dates import date822fmt
from indimail.smtpd.smtpd_io import Input

MAX_LEN = 200_000_000  # the original's "resources" limit


class BadProto(Exception):
    """Not a netstring: the original exits 100."""


class TooBig(Exception):
    """A length beyond MAX_LEN: the original exits 111."""


class Budget:
    """Optional byte budget (QMQP's outer netstring length)."""

    def __init__(self, left: int | None = None) -> None:
        self.left = left

    def spend(self, n: int) -> None:
        if self.left is None:
            return
        if n > self.left:
            raise BadProto()
        self.left -= n


def get_byte(inp: Input, budget: Budget | None = None) -> int:
    if budget is not None:
        budget.spend(1)
    if not inp.buf:
        inp.fill()
    b = inp.buf[0]
    del inp.buf[:1]
    return b


def get_len(inp: Input, budget: Budget | None = None, first: int | None = None) -> int:
    n = 0
    for digits in range(12):  # at most 9 digits below MAX_LEN, then ':'
        ch = first if first is not None else get_byte(inp, budget)
        first = None
        if ch == 0x3A:
            if digits == 0:
                raise BadProto()
            return n
        if not 0x30 <= ch <= 0x39:
            raise BadProto()
        n = n * 10 + ch - 0x30
        if n > MAX_LEN:
            raise TooBig()
    raise TooBig()


def get_comma(inp: Input, budget: Budget | None = None) -> None:
    if get_byte(inp, budget) != 0x2C:
        raise BadProto()


def copy(inp: Input, n: int, sink: Callable[[bytes], None], budget: Budget | None = None) -> None:
    """Pass exactly ``n`` bytes to ``sink`` in chunks."""
    if budget is not None:
        budget.spend(n)
    for _ in range(n + 1):  # each round moves at least one byte
        if n <= 0:
            return
        if not inp.buf:
            inp.fill()
        take = min(n, len(inp.buf))
        sink(bytes(inp.buf[:take]))
        del inp.buf[:take]
        n -= take


def get_small(inp: Input, limit: int, budget: Budget | None = None) -> bytes | None:
    """A netstring of at most ``limit - 1`` bytes; longer ones are skipped (None)."""
    n = get_len(inp, budget)
    parts: list[bytes] = []
    if n >= limit:
        copy(inp, n, lambda _b: None, budget)
        get_comma(inp, budget)
        return None
    copy(inp, n, parts.append, budget)
    get_comma(inp, budget)
    return b"".join(parts)


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


_SAFE_OK = frozenset(".@%+/=:-_[] ")
_ASCII_TO_SAFE = {
    c: "?"
    for c in range(128)
    if not (chr(c) in _SAFE_OK or (chr(c).isascii() and chr(c).isalnum()))
}


def _safe(s: str) -> str:
    if s.isascii():
        return s.translate(_ASCII_TO_SAFE)
    ok = _SAFE_OK
    return "".join(
        c if (c in ok or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")) else "?"
        for c in s
    )


def received_line(
    program: str,
    protocol: str,
    pid: int,
    local: str | None,
    remoteip: str | None,
    remotehost: str | None,
    remoteinfo: str | None,
    helo: str | None,
    hide: bool,
    when: float | None = None,
) -> bytes:
    """``Received: indimail-mta <program> <pid> from ... by ... with ...; <date>``."""
    s = f"Received: indimail-mta {program} {pid}"
    if remotehost and not hide:
        s += " from " + _safe(remotehost)
    if helo is not None and not hide:
        s += f" (HELO {_safe(helo)})"
    if remoteip and not hide:
        s += " ("
        if remoteinfo:
            s += _safe(remoteinfo) + "@"
        s += _safe(remoteip) + ")\n"
    if local and not hide:
        s += "  by " + _safe(local)
    s += f" with {protocol}; {date822fmt(when)}\n"
    return s.encode("utf-8", "surrogateescape")
