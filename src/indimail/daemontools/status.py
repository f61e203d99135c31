"""The ``supervise/status`` file: what supervise writes, what svstat reads.

Layout (little-endian pid; the fork's table, see the supervision spec):

====== ==========================================================
0-11   TAI64N of the last change
12-15  pid of the service while up, else 0
16     1 when paused
17     want: ``u``, ``d`` or 0
18-19  wait interval, native short (>0 seconds, <0 wait forever)
20     1 up, 0 down
21-24  (our extension) pid of the supervising process, little-endian
====== ==========================================================

Debian's daemontools ``svstat`` reads bytes 0-17 and calls a service up
when the pid is not 0, so the pid is 0 whenever the service is down (the
fork stores supervise's own pid there; we keep that pid in bytes 21-24
instead, which the fork's svstat, reading 21 bytes, never sees).  A reader
accepts 18-byte files (daemontools), 21-byte files (the fork) and ours.
"""

from __future__ import annotations

import os
import struct

from indimail.core import tai64n
from indimail.core.record import Record

CLASSIC_SIZE = 18
FORK_SIZE = 21
SIZE = 25
_SHORT = struct.Struct("=h")


class Status(Record):
    """Decoded status file."""

    _fields = ("seconds", "nanos", "pid", "paused", "want", "wait", "up", "spid", "size")
    __slots__ = _fields

    def __init__(
        self,
        seconds: int,  # unix time of the last change
        nanos: int,
        pid: int,  # service pid (0 = down); for a fork file, supervise pid when down
        paused: bool,
        want: str,  # "u", "d" or ""
        wait: int = 0,  # wait interval (fork/ours only)
        up: bool = False,
        spid: int = 0,  # supervising pid when known (fork file down, or ours)
        size: int = SIZE,
    ) -> None:
        for name, value in zip(
            self._fields, (seconds, nanos, pid, paused, want, wait, up, spid, size), strict=True
        ):
            self._set(name, value)


def encode(
    stamp: bytes, pid: int, paused: bool, want: str, wait: int, up: bool, spid: int
) -> bytes:
    """The 25 bytes of a status file (``stamp`` = 12-byte TAI64N)."""
    return b"".join(
        (
            stamp,
            struct.pack("<I", pid & 0xFFFFFFFF),
            b"\x01" if paused else b"\x00",
            want.encode("ascii") if want else b"\x00",
            _SHORT.pack(max(-32768, min(32767, wait))),
            b"\x01" if up else b"\x00",
            struct.pack("<I", spid & 0xFFFFFFFF),
        )
    )


def decode(data: bytes) -> Status:
    """Decode an 18-, 21- or 25-byte status file; ValueError if shorter."""
    if len(data) < CLASSIC_SIZE:
        raise ValueError("bad format")
    seconds, nanos = tai64n.unpack(data)
    pid = struct.unpack_from("<I", data, 12)[0]
    paused = data[16] != 0
    want = chr(data[17]) if data[17] else ""
    if len(data) < FORK_SIZE:
        return Status(seconds, nanos, pid, paused, want, 0, pid != 0, 0, CLASSIC_SIZE)
    wait = _SHORT.unpack_from(data, 18)[0]
    up = data[20] != 0
    if len(data) >= SIZE:
        spid = struct.unpack_from("<I", data, 21)[0]
        return Status(seconds, nanos, pid, paused, want, wait, up, spid, SIZE)
    # The fork's own file: while down or waiting the pid is supervise's.
    spid = pid if not up else 0
    return Status(seconds, nanos, pid, paused, want, wait, up, spid, FORK_SIZE)


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64)


def service_pid(data: bytes) -> int:
    """Pid of the running service in a status file, else 0."""
    try:
        st = decode(data)
    except ValueError:
        return 0
    return st.pid if st.up else 0


def exists_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
