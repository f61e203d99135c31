"""djb's constant database (cdb), byte-compatible with cdbmake and tinycdb.

Layout: a 2048-byte header of 256 ``(position, slot count)`` pairs, then
the records ``(klen, dlen, key, data)``, then 256 open hash tables of
``(hash, record position)`` slots.  Every number is a little-endian u32,
so a database must stay under 4 GiB.

cdb files are read by daemons from paths an admin controls, and a torn
or hostile file must not crash them: the reader checks every position
and length against the file size and raises :class:`CdbError` (never
``IndexError`` or ``struct.error``), and bounds every probe loop by the
table's slot count.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator

HEADER_SIZE = 2048
MAX_SIZE = 0xFFFFFFFF  # positions are u32
HASH_START = 5381

_PAIR = struct.Struct("<II")
_READ_CHUNK = 1 << 16


class CdbError(Exception):
    """The file is not a well-formed cdb (truncated, corrupt or too big)."""


def cdb_hash(key: bytes) -> int:
    """djb's hash: h = ((h << 5) + h) ^ c, starting at 5381, mod 2**32."""
    h = HASH_START
    for c in key:
        h = (((h << 5) + h) & 0xFFFFFFFF) ^ c
    return h


class Reader:
    """Random access to a cdb file, mapped into memory when non-empty."""

    def __init__(self, path: str | os.PathLike[str] | os.PathLike[bytes] | bytes) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._init_buffer(_map_fd(fd))
        finally:
            os.close(fd)

    @classmethod
    def from_bytes(cls, data: bytes) -> Reader:
        """A reader over bytes already in memory (tests, fuzzing, pipes)."""
        self = cls.__new__(cls)
        self._init_buffer(bytes(data))
        return self

    @classmethod
    def from_fd(cls, fd: int) -> Reader:
        """A reader over an open descriptor such as stdin.

        A regular file is mapped; anything else (a pipe) is read to its
        end, refusing more than a cdb can legally hold.
        """
        self = cls.__new__(cls)
        self._init_buffer(_map_fd(fd))
        return self

    def _init_buffer(self, buf: bytes | mmap.mmap) -> None:
        self._buf: bytes | mmap.mmap | None = buf
        self._size = len(buf)
        if self._size < HEADER_SIZE:
            self.close()
            raise CdbError(
                f"truncated header: file has {self._size} bytes, "
                f"header needs {HEADER_SIZE} at offset 0"
            )

    # -- resource handling ---------------------------------------------

    def close(self) -> None:
        """Release the mapping; further lookups raise ValueError."""
        buf, self._buf = self._buf, None
        if isinstance(buf, mmap.mmap):
            buf.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Size of the database in bytes."""
        return self._size

    def _buffer(self) -> bytes | mmap.mmap:
        if self._buf is None:
            raise ValueError("I/O operation on closed cdb")
        return self._buf

    def _pair(self, pos: int, what: str) -> tuple[int, int]:
        """Two u32 at ``pos``, checked against the file size."""
        if pos + 8 > self._size:
            raise CdbError(f"{what} at offset {pos} runs past end of file ({self._size} bytes)")
        return _PAIR.unpack_from(self._buffer(), pos)

    def read(self, pos: int, length: int) -> bytes:
        """``length`` bytes at ``pos``, refusing anything outside the file."""
        if pos < 0 or length < 0 or pos + length > self._size:
            raise CdbError(
                f"{length} bytes at offset {pos} run past end of file ({self._size} bytes)"
            )
        return bytes(self._buffer()[pos : pos + length])

    # -- lookups ---------------------------------------------------------

    def locate(self, key: bytes) -> Iterator[tuple[int, int, int]]:
        """Yield ``(data position, data length, probes)`` for each record
        with ``key``, in the order cdb_findnext finds them.

        ``probes`` counts slots examined so far (1 = found in its home
        slot), which is what cdbstats reports as distance.
        """
        h = cdb_hash(key)
        hpos, hslots = self._pair((h & 0xFF) * 8, "header entry")
        if hslots == 0:
            return
        if hpos < HEADER_SIZE or hpos + hslots * 8 > self._size:
            raise CdbError(
                f"hash table {h & 0xFF} at offset {hpos} with {hslots} slots "
                f"lies outside the file ({self._size} bytes)"
            )
        buf = self._buffer()
        klen = len(key)
        slot = (h >> 8) % hslots
        for probes in range(1, hslots + 1):
            spos = hpos + slot * 8
            shash, rpos = _PAIR.unpack_from(buf, spos)
            if rpos == 0:
                return
            slot += 1
            if slot == hslots:
                slot = 0
            if shash != h:
                continue
            rklen, rdlen = self._pair(rpos, f"record (from slot at offset {spos})")
            if rklen != klen:
                continue
            dpos = rpos + 8 + rklen
            if dpos > self._size:
                raise CdbError(
                    f"key of record at offset {rpos} (klen {rklen}) "
                    f"runs past end of file ({self._size} bytes)"
                )
            if buf[rpos + 8 : dpos] != key:
                continue
            if dpos + rdlen > self._size:
                raise CdbError(
                    f"data of record at offset {rpos} (dlen {rdlen}) "
                    f"runs past end of file ({self._size} bytes)"
                )
            yield dpos, rdlen, probes

    def get(self, key: bytes) -> bytes | None:
        """Data of the first record with ``key``, or None."""
        for dpos, dlen, _ in self.locate(key):
            return self.read(dpos, dlen)
        return None

    def get_all(self, key: bytes) -> list[bytes]:
        """Data of every record with ``key``, first match first."""
        return [self.read(dpos, dlen) for dpos, dlen, _ in self.locate(key)]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | bytearray | memoryview):
            return False
        return next(self.locate(bytes(key)), None) is not None

    # -- sequential access -------------------------------------------------

    def end_of_data(self) -> int:
        """Where the records end: the position of hash table 0, as cdbdump
        takes it (every writer emits the tables in order after the data)."""
        eod, _ = self._pair(0, "header entry")
        if eod < HEADER_SIZE or eod > self._size:
            raise CdbError(
                f"end of data {eod} (header offset 0) outside {HEADER_SIZE}..{self._size}"
            )
        return eod

    def iter_records(self) -> Iterator[tuple[bytes, int, int]]:
        """Yield ``(key, data position, data length)`` in file order."""
        eod = self.end_of_data()
        buf = self._buffer()
        pos = HEADER_SIZE
        while pos < eod:
            if pos + 8 > eod:
                raise CdbError(f"record header at offset {pos} runs past end of data {eod}")
            klen, dlen = _PAIR.unpack_from(buf, pos)
            end = pos + 8 + klen + dlen
            if end > eod:
                raise CdbError(
                    f"record at offset {pos} (klen {klen}, dlen {dlen}) runs past end of data {eod}"
                )
            yield bytes(buf[pos + 8 : pos + 8 + klen]), pos + 8 + klen, dlen
            pos = end

    def iter_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, data)`` for every record, in file order."""
        for key, dpos, dlen in self.iter_records():
            yield key, self.read(dpos, dlen)


def _map_fd(fd: int) -> bytes | mmap.mmap:
    """Map a regular file, or read anything else to EOF (bounded)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            return b""
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            pass  # some filesystems cannot map; fall back to reading
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_SIZE:
            raise CdbError(f"input exceeds 4 GiB at offset {total - len(chunk)}: not a cdb")
        chunks.append(chunk)
    return b"".join(chunks)


class Writer:
    """Build a cdb in ``tmppath``, then rename it over ``path`` atomically.

    Readers of ``path`` therefore see either the old database or the
    complete new one, never a half-written file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tmppath: str | os.PathLike[str],
    ) -> None:
        self.path = path
        self.tmppath = tmppath
        fd = os.open(
            tmppath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644
        )
        try:
            self._file = open(fd, "wb", buffering=_READ_CHUNK)  # noqa: SIM115 - closed in finish
        except BaseException:
            os.close(fd)
            raise
        self._pos = HEADER_SIZE
        self._tables: list[list[tuple[int, int]]] = [[] for _ in range(256)]
        self._done = False
        try:
            self._file.write(b"\0" * HEADER_SIZE)
        except BaseException:
            self.abort()
            raise

    def add(self, key: bytes, data: bytes) -> None:
        """Append a record; duplicate keys are kept, in order."""
        if self._done:
            raise ValueError("cdb writer already finished")
        end = self._pos + 8 + len(key) + len(data)
        if end > MAX_SIZE:
            raise CdbError(f"database would exceed 4 GiB with the record at offset {self._pos}")
        h = cdb_hash(key)
        self._file.write(_PAIR.pack(len(key), len(data)))
        self._file.write(key)
        self._file.write(data)
        self._tables[h & 0xFF].append((h, self._pos))
        self._pos = end

    def finish(self) -> None:
        """Write hash tables and header, fsync, and rename into place."""
        if self._done:
            raise ValueError("cdb writer already finished")
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> None:
        # Check the total first so nothing is written for an oversize db.
        total = self._pos + sum(len(t) * 16 for t in self._tables)
        if total > MAX_SIZE:
            raise CdbError(f"database would exceed 4 GiB: hash tables end at offset {total}")
        header = bytearray()
        pos = self._pos
        for entries in self._tables:
            nslots = 2 * len(entries)
            header += _PAIR.pack(pos, nslots)
            if not nslots:
                continue
            slots = [(0, 0)] * nslots
            for h, rpos in entries:
                where = (h >> 8) % nslots
                while slots[where][1]:
                    where += 1
                    if where == nslots:
                        where = 0
                slots[where] = (h, rpos)
            self._file.write(b"".join(_PAIR.pack(h, p) for h, p in slots))
            pos += nslots * 8
        self._file.seek(0)
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.rename(self.tmppath, self.path)
        self._done = True

    def abort(self) -> None:
        """Give up: close and remove the temporary file."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmppath)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finish()


def make_from_pairs(
    path: str | os.PathLike[str],
    tmppath: str | os.PathLike[str],
    pairs: Iterable[tuple[bytes, bytes]],
) -> None:
    """Write ``pairs`` (in order, duplicates kept) as the cdb at ``path``."""
    with Writer(path, tmppath) as writer:
        for key, data in pairs:
            writer.add(key, data)
