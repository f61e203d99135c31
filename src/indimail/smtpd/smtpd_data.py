"""The DATA phase of qmail-smtpd: dot-unstuffing, bare LF, hops, size.

Lines arrive CRLF-terminated; they are written to ``out`` with LF endings
and the leading dot of a stuffed line removed, as the original's
``blast()``.  A lone LF is refused (:class:`BareLF`) unless ``allow_barelf``
(the original's ALLOW_BARELF: a lone LF then ends a line).  The message
size counts the bytes written; past ``databytes`` nothing more is written
but the data is still read to its end.  ``Received:`` and ``Delivered-To:``
header lines are counted as hops.

Memory stays bounded: a line longer than :data:`PARTIAL` is written in
pieces.
"""

from __future__ import annotations

from typing import BinaryIO

PARTIAL = 65536


# DATA kept in memory up to this many bytes, then in a temporary file
SPOOL_MEMORY = 256 * 1024


class BareLF(Exception):
    """A LF not preceded by CR arrived in DATA."""


class DataSink:
    """Feed raw DATA bytes; ``feed`` returns leftover bytes once '.' is seen."""

    def __init__(self, out: BinaryIO, databytes: int = 0, allow_barelf: bool = False) -> None:
        self.out = out
        self.databytes = databytes
        self.allow_barelf = allow_barelf
        self.size = 0
        self.hops = 0
        self.in_header = True
        self.line_start = True  # next byte starts a line
        self.buf = bytearray()
        self.done = False

    @property
    def too_big(self) -> bool:
        return self.databytes > 0 and self.size > self.databytes

    def _put(self, data: bytes) -> None:
        if not data:
            return
        if self.databytes > 0:
            room = self.databytes + 1 - self.size
            if room > 0:
                self.out.write(data[:room])
        else:
            self.out.write(data)
        self.size += len(data)

    def _header_line(self, content: bytes) -> None:
        if not self.in_header:
            return
        if content == b"":
            self.in_header = False
            return
        low = content[:9].lower()
        if low.startswith(b"received"):
            self.hops += 1
        if low == b"delivered":
            self.hops += 1

    @staticmethod
    def _body(buf: bytearray, pos: int, lines: list[bytes]) -> int:
        """The body's complete lines from ``pos`` at once (CRLF only, at a
        line start, past the header): what the line loop would write goes
        to ``lines``.  Returns where they end; ``-i`` when they end with the
        '.' line, ``i`` being where the bytes after it start; ``pos`` when a
        bare LF is among them (nothing taken: the line loop handles it)."""
        if buf.startswith(b".\r\n", pos):
            dot = pos
        else:
            dot = buf.find(b"\n.\r\n", pos)
            dot = dot + 1 if dot >= 0 else -1
        end = dot if dot >= 0 else buf.rfind(b"\n") + 1
        if end <= pos:
            return -(dot + 3) if dot >= 0 else pos
        seg = bytes(buf[pos:end])
        if seg.count(b"\n") != seg.count(b"\r\n"):
            return pos
        seg = seg.replace(b"\r\n", b"\n").replace(b"\n.", b"\n")
        lines.append(seg[1:] if seg[:1] == b"." else seg)
        return -(dot + 3) if dot >= 0 else end

    def feed(self, data: bytes) -> bytes | None:
        """Consume ``data``; None while more is needed, else the bytes after '.'."""
        self.buf += data
        buf = self.buf
        pos = 0
        n = len(buf)
        # complete lines are collected and written once per call: the bytes
        # written (and the databytes cut) are those of line-by-line writes
        lines: list[bytes] = []
        allow_barelf = self.allow_barelf
        whole = not allow_barelf  # the body may be taken whole (see _body)
        for _ in range(n):  # each round consumes one line (or all the body)
            if whole and not self.in_header and self.line_start:
                end = self._body(buf, pos, lines)
                if end < 0:  # the body up to '.' was taken whole
                    self._put(b"".join(lines))
                    self.done = True
                    rest = bytes(buf[-end:])
                    buf.clear()
                    return rest
                if end > pos:
                    pos = end
                    break
                # a bare LF: the lines below write what precedes it and raise
                whole = False
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if nl > pos and buf[nl - 1] == 0x0D:
                content = bytes(buf[pos : nl - 1])
            elif allow_barelf:
                content = bytes(buf[pos:nl])
            else:
                self._put(b"".join(lines))
                raise BareLF()
            if self.line_start:
                if content[:1] == b".":
                    if content == b".":
                        self._put(b"".join(lines))
                        self.done = True
                        rest = bytes(buf[nl + 1 :])
                        buf.clear()
                        return rest
                    content = content[1:]
                if self.in_header:
                    self._header_line(content)
            lines.append(content)
            lines.append(b"\n")
            self.line_start = True
            pos = nl + 1
        self._put(b"".join(lines))
        del buf[:pos]
        if len(buf) > PARTIAL:
            # a very long line: write all but a trailing CR (may start CRLF)
            keep = 1 if buf[-1] == 0x0D else 0
            chunk = bytes(buf[: len(buf) - keep])
            if self.line_start:
                if chunk.startswith(b"."):
                    chunk = chunk[1:]
                if self.in_header:
                    self._header_line(chunk[:16] or b"x")
            # a CR inside a line is data, as in the original
            self._put(chunk)
            self.line_start = False
            del buf[: len(buf) - keep]
        return None
