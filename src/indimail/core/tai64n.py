"""TAI64 / TAI64N labels as daemontools writes them.

A TAI64N stamp is 12 bytes: the 8-byte big-endian TAI64 second
(2**62 + 10 + unix seconds; leap seconds ignored, as the original does)
followed by 4 big-endian bytes of nanoseconds.  Its text form, used by
``multilog t``, ``tai64n`` and rotated log file names, is ``@`` plus the
24 lowercase hex digits of those bytes.
"""

from __future__ import annotations

import struct
import time

TAI_OFFSET = (1 << 62) + 10  # TAI64 label of the unix epoch
_PACK = struct.Struct(">QI")


def pack(seconds: int, nanos: int) -> bytes:
    """12-byte TAI64N of unix time ``seconds`` + ``nanos``."""
    return _PACK.pack(TAI_OFFSET + seconds, nanos)


def unpack(data: bytes) -> tuple[int, int]:
    """(unix seconds, nanoseconds) from the first 12 bytes of ``data``."""
    sec, nano = _PACK.unpack_from(data, 0)
    return sec - TAI_OFFSET, nano


def now_pack() -> bytes:
    """12-byte TAI64N of the current time."""
    ns = time.time_ns()
    return pack(ns // 1_000_000_000, ns % 1_000_000_000)


def label(seconds: int | None = None, nanos: int = 0) -> bytes:
    """``@`` + 24 hex digits (ASCII bytes); the current time by default."""
    if seconds is None:
        ns = time.time_ns()
        seconds, nanos = ns // 1_000_000_000, ns % 1_000_000_000
    return b"@%016x%08x" % (TAI_OFFSET + seconds, nanos)


def now_label() -> bytes:
    """Label of the current time (``@4000000065a1b2c3...``)."""
    ns = time.time_ns()
    return b"@%016x%08x" % (TAI_OFFSET + ns // 1_000_000_000, ns % 1_000_000_000)


def parse_label(text: bytes) -> tuple[int, int] | None:
    """(unix seconds, nanos) of a leading ``@<24 hex>``, or None."""
    if len(text) < 25 or text[:1] != b"@":
        return None
    digits = text[1:25]
    try:
        raw = bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return unpack(raw)


def format_local(seconds: int, nanos: int) -> bytes:
    """``YYYY-MM-DD HH:MM:SS.nnnnnnnnn`` in local time, as tai64nlocal."""
    tm = time.localtime(seconds)
    return b"%04d-%02d-%02d %02d:%02d:%02d.%09d" % (
        tm.tm_year,
        tm.tm_mon,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        nanos,
    )
