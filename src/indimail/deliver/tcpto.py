"""The tcpto table (``QUEUEDIR/lock/tcpto``) and qmail-tcpto / qmail-tcpok.

qmail-remote remembers hosts that did not answer, so that a dead MX is not
retried by every delivery for the next hour.  The table is a file of 64
records of 32 bytes (2048 bytes, made by queue-fix), read and rewritten
under an exclusive lock::

    offset  0  address family (AF_INET / AF_INET6 of this platform), u32 LE
    offset  4  reason: number of recent failures (0 = free slot, max 10)
    offset  8  when: time of the last failure, u32 LE
    offset 16  address: 4 bytes (IPv4) or 16 bytes (IPv6)

An address is skipped when it failed at least twice and the last failure is
younger than ``((60 + (pid & 31)) << 6)`` seconds (64 to 97 minutes) with the
default penalty; a smaller ``min_penalty`` (smtproutes, MIN_PENALTY)
shortens that window by the difference from 3600 s.

``qmail-tcpto`` lists the table of every queue on stderr, ``qmail-tcpok``
clears it, both in the multi-queue form of indimail-mta (``processing queue
DIR`` on stdout before each queue).
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal

TCPTO_BUFSIZ = 2048
RECORD = 32
MIN_PENALTY = 3600
MAX_TOLERANCE = 120
EXTRA_QUEUES = ("nqueue", "slowq", "qmta")


def default_file(environ: dict[str, str] | None = None) -> Path:
    """``$QUEUEDIR/lock/tcpto``, else ``queue/lock/tcpto`` (relative, as qmail)."""
    return Path(default_path(environ))


def default_path(environ: dict[str, str] | None = None) -> str:
    """:func:`default_file` as a string (qmail-remote: no Path per delivery)."""
    env = os.environ if environ is None else environ
    return os.path.join(env.get("QUEUEDIR") or "queue", "lock", "tcpto")


@functools.lru_cache(maxsize=256)
def _family_and_bytes(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return socket.AF_INET, addr.packed
    return socket.AF_INET6, addr.packed


def _when(rec: bytes | bytearray) -> int:
    return struct.unpack_from("<I", rec, 8)[0]


def _find(buf: bytes | bytearray, af: int, packed: bytes) -> int:
    """Index of the record of (af, address) in ``buf``, or -1 (no copies:
    this runs before every remote delivery)."""
    end = 16 + len(packed)
    for at in range(0, len(buf) - RECORD + 1, RECORD):
        if buf[at] == af and buf[at + 16 : at + end] == packed:
            return at // RECORD
    return -1


class Table:
    """Access to one tcpto file; every failure to open or lock disables it
    silently, as in qmail (the table is an optimisation, never a reason to
    defer mail)."""

    def __init__(self, path: Path | str) -> None:
        self.path = os.fspath(path)
        self.flag_was_there = False

    def _open(self) -> tuple[int, bytearray] | None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            buf = bytearray(os.pread(fd, TCPTO_BUFSIZ, 0))
        except OSError:
            os.close(fd)
            return None
        if len(buf) < RECORD:
            os.close(fd)
            return None
        return fd, buf

    def is_timed_out(
        self, ip: str, min_penalty: int = MIN_PENALTY, now: float | None = None, pid: int = 0
    ) -> bool:
        """True if ``ip`` timed out recently and should not be tried now."""
        self.flag_was_there = False
        opened = self._open()
        if opened is None:
            return False
        fd, buf = opened
        os.close(fd)
        af, packed = _family_and_bytes(ip)
        now = time.time() if now is None else now
        i = _find(buf, af, packed)
        if i < 0:
            return False
        rec = buf[i * RECORD : (i + 1) * RECORD]
        self.flag_was_there = True
        if rec[4] >= 2:
            pid = pid or os.getpid()
            if min_penalty > 0:
                extra = ((60 + (pid & 31)) << 6) - MIN_PENALTY
                backoff = min_penalty
            else:
                extra = 0
                backoff = -min_penalty
            if int(now) - _when(rec) < backoff + extra:
                return True
        return False

    def record(
        self, ip: str, failed: bool, max_tolerance: int = MAX_TOLERANCE, now: float | None = None
    ) -> None:
        """Note a failure (``failed``) or a success (clears the entry)."""
        if not failed and not self.flag_was_there:
            return
        opened = self._open()
        if opened is None:
            return
        fd, buf = opened
        try:
            af, packed = _family_and_bytes(ip)
            when = int(time.time() if now is None else now) & 0xFFFFFFFF
            n = len(buf) // RECORD
            i = _find(buf, af, packed)
            if i >= 0:
                rec = bytearray(buf[i * RECORD : (i + 1) * RECORD])
                if not failed:
                    rec[4] = 0
                else:
                    if rec[4] and when < max_tolerance + _when(rec):
                        return
                    rec[4] = min(rec[4] + 1, 10)
                    struct.pack_into("<I", rec, 8, when)
                os.pwrite(fd, bytes(rec), i * RECORD)
                return
            if not failed:
                return
            slot = next((i for i in range(n) if not buf[i * RECORD + 4]), -1)
            if slot < 0:  # full: reuse the oldest, weighted by its failures
                best = None
                for i in range(n):
                    rec = buf[i * RECORD : (i + 1) * RECORD]
                    score = _when(rec) + (rec[4] << 10)
                    if best is None or score < best:
                        best, slot = score, i
            rec = bytearray(RECORD)
            struct.pack_into("<I", rec, 0, af)
            rec[4] = 1
            struct.pack_into("<I", rec, 8, when)
            rec[16 : 16 + len(packed)] = packed
            os.pwrite(fd, bytes(rec), slot * RECORD)
        except OSError:
            pass
        finally:
            os.close(fd)


def format_table(buf: bytes, now: int) -> str:
    """qmail-tcpto's listing of one table."""
    lines = []
    for i in range(len(buf) // RECORD):
        rec = buf[i * RECORD : (i + 1) * RECORD]
        if rec[4] < 1:
            continue
        af = rec[0]
        if af == socket.AF_INET:
            addr = str(ipaddress.IPv4Address(bytes(rec[16:20])))
            kind = "ipv4"
        elif af == socket.AF_INET6:
            addr = _ip6_fmt(bytes(rec[16:32]))
            kind = "ipv6"
        else:
            continue
        ago = (now - _when(rec)) % (1 << 64)  # unsigned, as the original prints it
        lines.append(f"{addr} {kind} timed out {ago} seconds ago; # recent timeouts: {rec[4]}\n")
    return "".join(lines)


def _ip6_fmt(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    if addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def _queues(prog: str) -> list[Path]:
    """The queues process_queue() visits: numbered ones up to the first
    missing, then the extra queues that exist."""
    p = _paths.get()
    try:
        base = p.queue_base
    except Fatal as exc:
        raise Fatal(111, f"fatal: unable to read controls: {exc.message}") from None
    found: list[Path] = []
    for q in p.queue_dirs():
        try:
            os.stat(q)
        except FileNotFoundError:
            break
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to access {q}: {exc.strerror}") from None
        found.append(q)
    for name in EXTRA_QUEUES:
        extra = base / name
        try:
            os.stat(extra)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to access {extra}: {exc.strerror}") from None
        found.append(extra)
    return found


def _each_queue(prog: str, func: Callable[[Path], None]) -> int:
    out = sys.stdout
    for q in _queues(prog):
        out.write(f"processing queue {q}\n")
        out.flush()
        func(q)
        out.write("\n")
        out.flush()
    return 0


def _tcpto_one(q: Path) -> None:
    lock = q / "lock"
    if not lock.is_dir():
        raise Fatal(111, f"fatal: unable to chdir to {q}/lock: no such directory")
    fname = lock / "tcpto"
    try:
        fdlock = os.open(fname, os.O_WRONLY)
    except OSError as exc:
        raise Fatal(
            111, f"fatal: unable to open {q}/lock/tcpto for write: {exc.strerror}"
        ) from None
    try:
        try:
            fcntl.flock(fdlock, fcntl.LOCK_EX)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to lock {q}/lock/tcpto: {exc.strerror}") from None
        try:
            with open(fname, "rb") as fh:
                buf = fh.read(TCPTO_BUFSIZ)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to read {q}/lock/tcpto: {exc.strerror}") from None
    finally:
        os.close(fdlock)
    sys.stdout.flush()
    sys.stderr.write(format_table(buf, int(time.time())))
    sys.stderr.flush()


def _tcpok_one(q: Path) -> None:
    lock = q / "lock"
    if not lock.is_dir():
        raise Fatal(111, f"fatal: unable to chdir to {q}/lock: no such directory")
    fname = lock / "tcpto"
    try:
        fd = os.open(fname, os.O_WRONLY)
    except OSError as exc:
        raise Fatal(111, f"fatal: unable to open {q}/lock/tcpto: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to lock {q}/lock/tcpto: {exc.strerror}") from None
        try:
            os.pwrite(fd, bytes(TCPTO_BUFSIZ), 0)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to clear {q}/lock/tcpto: {exc.strerror}") from None
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """qmail-tcpto (list) or qmail-tcpok (clear), chosen by argv[0]."""
    prog = os.path.basename(argv[0]) if argv else "qmail-tcpto"
    if prog == "qmail-tcpok":
        return _each_queue(prog, _tcpok_one)
    return _each_queue(prog, _tcpto_one)
