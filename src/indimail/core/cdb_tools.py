"""cdbmake, cdbget, cdbdump, cdbtest and cdbstats.

Same interfaces as djb's tools as shipped with indimail-mta: cdbmake
builds ``f`` through ``ftmp`` from ``+klen,dlen:key->data`` records on
stdin; the other four read a cdb on stdin.  Exit codes follow the
originals: 0 ok, 100 key not found (cdbget) or bad cdbmake usage, 111
for every read, write or format error.  Unlike the originals, cdbget,
cdbtest and cdbstats also accept a pipe on stdin (read into memory), and
cdbmake removes ``ftmp`` when it gives up.
"""

from __future__ import annotations

import getopt
import itertools
import os
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

from indimail.core.cdb import HEADER_SIZE, MAX_SIZE, CdbError, Reader, Writer
from indimail.core.errors import EXIT_PERM, EXIT_TEMP, Fatal

_CHUNK = 1 << 16
_MAX_TESTED_KEY = 1024  # cdbtest/cdbstats skip longer keys, as the originals do
_U32 = struct.Struct("<I")


class _EndOfInput(Exception):
    """Input ended where more bytes were required."""


class _Input:
    """Buffered reads from a descriptor that track the byte offset.

    Reads never allocate from a length taken from the input: a claimed
    length is honoured only as far as bytes actually arrive.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._i = 0
        self.offset = 0  # bytes consumed so far

    def _fill(self) -> bool:
        try:
            chunk = os.read(self._fd, _CHUNK)
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"unable to read input: {exc.strerror}") from None
        if not chunk:
            return False
        self._buf = self._buf[self._i :] + chunk
        self._i = 0
        return True

    def getc(self) -> int:
        """Next byte, or raise _EndOfInput."""
        if self._i >= len(self._buf) and not self._fill():
            raise _EndOfInput
        c = self._buf[self._i]
        self._i += 1
        self.offset += 1
        return c

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` (> 0) bytes, at least one, or raise _EndOfInput."""
        if self._i >= len(self._buf) and not self._fill():
            raise _EndOfInput
        piece = self._buf[self._i : self._i + limit]
        self._i += len(piece)
        self.offset += len(piece)
        return piece

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes, growing only with what is delivered."""
        parts = []
        while n > 0:
            piece = self.read_some(min(n, _CHUNK))
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)


def _stdout() -> BinaryIO:
    return sys.stdout.buffer


def _write(out: BinaryIO, data: bytes) -> None:
    try:
        out.write(data)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"unable to write output: {exc.strerror}") from None


def _flush(out: BinaryIO) -> None:
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"unable to write output: {exc.strerror}") from None


def _open_stdin() -> Reader:
    """The cdb on standard input (mapped when it is a regular file)."""
    try:
        return Reader.from_fd(0)
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"unable to read input: {exc.strerror}") from None


# -- cdbmake ------------------------------------------------------------


def _bad_format(record: int, offset: int, what: str) -> Fatal:
    return Fatal(
        EXIT_TEMP, f"unable to read input: bad format: record {record} at byte {offset}: {what}"
    )


def _read_length(inp: _Input, record: int, end: int, name: str) -> int:
    """Decimal digits up to the byte ``end`` (none means 0, as in cdbmake)."""
    value = 0
    while True:
        start = inp.offset
        c = inp.getc()
        if c == end:
            break
        if not 0x30 <= c <= 0x39:
            raise _bad_format(
                record, start, f"expected a digit or {chr(end)!r} in {name}, got {bytes([c])!r}"
            )
        value = value * 10 + (c - 0x30)
        if value > MAX_SIZE:
            raise _bad_format(record, start, f"{name} exceeds 4 GiB")
    return value


def _parse_records(inp: _Input, writer: Writer) -> None:
    """Feed ``+klen,dlen:key->data\\n`` records to ``writer`` until a blank line."""
    record = 1
    where = ""
    try:
        while True:
            start = inp.offset
            where = "at the start of a record"
            c = inp.getc()
            if c == 0x0A:
                return
            if c != 0x2B:  # '+'
                raise _bad_format(
                    record, start, f"expected '+' or a blank line, got {bytes([c])!r}"
                )
            where = "in the key length"
            klen = _read_length(inp, record, 0x2C, "key length")  # ','
            where = "in the data length"
            dlen = _read_length(inp, record, 0x3A, "data length")  # ':'
            where = f"inside the {klen}-byte key"
            key = inp.read_exact(klen)
            where = "before '->'"
            for expected in b"->":
                pos = inp.offset
                c = inp.getc()
                if c != expected:
                    raise _bad_format(
                        record, pos, f"expected {chr(expected)!r} after the key, got {bytes([c])!r}"
                    )
            where = f"inside the {dlen}-byte data"
            data = inp.read_exact(dlen)
            where = "before the newline ending the record"
            pos = inp.offset
            c = inp.getc()
            if c != 0x0A:
                raise _bad_format(
                    record, pos, f"expected a newline after the data, got {bytes([c])!r}"
                )
            try:
                writer.add(key, data)
            except CdbError as exc:
                raise Fatal(EXIT_TEMP, f"unable to create {writer.tmppath}: {exc}") from None
            except OSError as exc:
                raise Fatal(
                    EXIT_TEMP, f"unable to create {writer.tmppath}: {exc.strerror}"
                ) from None
            record += 1
    except _EndOfInput:
        if where == "at the start of a record":
            where += " (a blank line must end the input)"
        raise _bad_format(record, inp.offset, f"input ended {where}") from None


def cdbmake(args: list[str]) -> int:
    """cdbmake f ftmp: build f atomically from records on stdin."""
    if len(args) < 2:
        raise Fatal(EXIT_PERM, "usage: cdbmake f ftmp")
    fn, fntmp = args[0], args[1]
    try:
        writer = Writer(fn, fntmp)
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"unable to create {fntmp}: {exc.strerror}") from None
    try:
        _parse_records(_Input(0), writer)
    except BaseException:
        writer.abort()
        raise
    try:
        writer.finish()
    except CdbError as exc:
        raise Fatal(EXIT_TEMP, f"unable to create {fntmp}: {exc}") from None
    except OSError as exc:
        if exc.filename2 is not None:
            raise Fatal(EXIT_TEMP, f"unable to rename {fntmp} to {fn}: {exc.strerror}") from None
        raise Fatal(EXIT_TEMP, f"unable to create {fntmp}: {exc.strerror}") from None
    return 0


# -- cdbget -------------------------------------------------------------


def _leading_number(text: str) -> int:
    """Leading decimal digits of ``text`` (0 if none), like scan_ulong."""
    digits = ""
    for ch in text:
        if not "0" <= ch <= "9":
            break
        digits += ch
    return int(digits) if digits else 0


def cdbget(args: list[str]) -> int:
    """cdbget [-n] key [skip] < cdb: print the data of a record."""
    usage = Fatal(EXIT_TEMP, "usage: cdbget [-n] key [skip]")
    try:
        opts, rest = getopt.getopt(args, "n")
    except getopt.GetoptError:
        raise usage from None
    if not rest:
        raise usage
    key = os.fsencode(rest[0])
    if opts:  # -n: keys written by cdb-database end in a NUL
        key += b"\0"
    skip = _leading_number(rest[1]) if len(rest) > 1 else 0

    with _open_stdin() as reader:
        match = next(itertools.islice(reader.locate(key), min(skip, sys.maxsize), None), None)
        if match is None:
            return 100
        dpos, dlen, _ = match
        out = _stdout()
        end = dpos + dlen
        while dpos < end:
            n = min(_CHUNK, end - dpos)
            _write(out, reader.read(dpos, n))
            dpos += n
        _flush(out)
    return 0


# -- cdbdump ------------------------------------------------------------


def _copy(inp: _Input, out: BinaryIO, n: int, record_pos: int) -> None:
    while n > 0:
        try:
            piece = inp.read_some(min(n, _CHUNK))
        except _EndOfInput:
            raise Fatal(
                EXIT_TEMP,
                f"unable to read input: truncated file: record at offset {record_pos} "
                f"ends past end of file ({inp.offset} bytes)",
            ) from None
        _write(out, piece)
        n -= len(piece)


def cdbdump(args: list[str]) -> int:
    """cdbdump < cdb: print every record in cdbmake format.

    Reads stdin sequentially, so a pipe works.
    """
    inp = _Input(0)
    out = _stdout()
    try:
        header = inp.read_exact(HEADER_SIZE)
    except _EndOfInput:
        raise Fatal(
            EXIT_TEMP,
            f"unable to read input: truncated file: header needs {HEADER_SIZE} bytes, "
            f"got {inp.offset}",
        ) from None
    (eod,) = _U32.unpack_from(header, 0)
    if eod < HEADER_SIZE:
        raise Fatal(
            EXIT_TEMP, f"unable to read input: bad format: end of data {eod} lies inside the header"
        )
    pos = HEADER_SIZE
    while pos < eod:
        try:
            klen, dlen = struct.unpack("<II", inp.read_exact(8))
        except _EndOfInput:
            raise Fatal(
                EXIT_TEMP,
                f"unable to read input: truncated file: record header at offset {pos} "
                f"ends past end of file ({inp.offset} bytes)",
            ) from None
        end = pos + 8 + klen + dlen
        if end > eod:
            raise Fatal(
                EXIT_TEMP,
                f"unable to read input: bad format: record at offset {pos} "
                f"(klen {klen}, dlen {dlen}) runs past end of data {eod}",
            )
        _write(out, b"+%d,%d:" % (klen, dlen))
        _copy(inp, out, klen, pos)
        _write(out, b"->")
        _copy(inp, out, dlen, pos)
        _write(out, b"\n")
        pos = end
    _write(out, b"\n")
    _flush(out)
    return 0


# -- cdbtest and cdbstats ---------------------------------------------------


def cdbtest(args: list[str]) -> int:
    """cdbtest < cdb: check that every record is found by its key."""
    found = otherpos = badlen = notfound = untested = 0
    with _open_stdin() as reader:
        for key, dpos, dlen in reader.iter_records():
            if len(key) > _MAX_TESTED_KEY:
                untested += 1
                continue
            first = next(reader.locate(key), None)
            if first is None:
                notfound += 1
            elif first[0] != dpos:
                otherpos += 1
            elif first[1] != dlen:
                badlen += 1
            else:
                found += 1
    out = _stdout()
    _write(
        out,
        (
            f"found: {found}\n"
            f"different record: {otherpos}\n"
            f"bad length: {badlen}\n"
            f"not found: {notfound}\n"
            f"untested: {untested}\n"
        ).encode(),
    )
    _flush(out)
    return 0


def _probes_to(reader: Reader, key: bytes, dpos: int) -> int:
    """Slots probed before the lookup of ``key`` reaches the record at ``dpos``."""
    for mpos, _mlen, probes in reader.locate(key):
        if mpos == dpos:
            return probes
    raise Fatal(
        EXIT_TEMP,
        f"unable to read input: bad format: record with data at offset {dpos} "
        "is not reachable through its hash table",
    )


def cdbstats(args: list[str]) -> int:
    """cdbstats < cdb: count records by distance from their home slot."""
    records = 0
    distance = [0] * 11  # d0..d9, then >9
    with _open_stdin() as reader:
        for key, dpos, _dlen in reader.iter_records():
            if len(key) > _MAX_TESTED_KEY:
                continue
            records += 1
            distance[min(_probes_to(reader, key, dpos), 11) - 1] += 1
    labels = ["records", *(f"d{i}" for i in range(10)), ">9"]
    counts = [records, *distance]
    text = "".join(f"{label:<8}{count:>10}\n" for label, count in zip(labels, counts, strict=True))
    out = _stdout()
    _write(out, text.encode())
    _flush(out)
    return 0


# -- dispatch ---------------------------------------------------------------

COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "cdbmake": cdbmake,
    "cdbget": cdbget,
    "cdbdump": cdbdump,
    "cdbtest": cdbtest,
    "cdbstats": cdbstats,
}


def main(argv: list[str]) -> int:
    """Run the command named by ``basename(argv[0])``."""
    name = os.path.basename(argv[0]) if argv else ""
    command = COMMANDS.get(name)
    if command is None:
        raise Fatal(EXIT_PERM, f"unknown cdb command {name!r} (one of {', '.join(COMMANDS)})")
    try:
        return command(argv[1:])
    except CdbError as exc:
        raise Fatal(EXIT_TEMP, f"unable to read input: {exc}") from None
