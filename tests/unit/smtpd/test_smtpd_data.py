"""DataSink takes the body in one piece where it can: the bytes written,
size, hops and what is left over must be those of the plain line-by-line
reading (kept here as the reference), however the input is cut."""

from __future__ import annotations

import io
import random

import pytest

from indimail.smtpd.smtpd_data import PARTIAL, BareLF, DataSink


class LineSink:
    """The reference: one line at a time, as the original's blast()."""

    def __init__(self, databytes: int, allow_barelf: bool) -> None:
        self.out = io.BytesIO()
        self.databytes = databytes
        self.allow_barelf = allow_barelf
        self.size = self.hops = 0
        self.in_header = self.line_start = True
        self.buf = bytearray()

    def _put(self, data: bytes) -> None:
        if data:
            room = self.databytes + 1 - self.size
            if self.databytes <= 0:
                self.out.write(data)
            elif room > 0:
                self.out.write(data[:room])
            self.size += len(data)

    def _header_line(self, content: bytes) -> None:
        if not self.in_header:
            return
        if content == b"":
            self.in_header = False
            return
        low = content[:9].lower()
        self.hops += low.startswith(b"received") + (low == b"delivered")

    def feed(self, data: bytes) -> bytes | None:
        self.buf += data
        buf, pos = self.buf, 0
        while (nl := buf.find(b"\n", pos)) >= 0:
            if nl > pos and buf[nl - 1] == 0x0D:
                content = bytes(buf[pos : nl - 1])
            elif self.allow_barelf:
                content = bytes(buf[pos:nl])
            else:
                raise BareLF()
            if self.line_start and content == b".":
                rest = bytes(buf[nl + 1 :])
                buf.clear()
                return rest
            if self.line_start and content.startswith(b"."):
                content = content[1:]
            if self.line_start:
                self._header_line(content)
            self._put(content + b"\n")
            self.line_start = True
            pos = nl + 1
        del buf[:pos]
        if len(buf) > PARTIAL:
            keep = 1 if buf[-1] == 0x0D else 0
            chunk = bytes(buf[: len(buf) - keep])
            if self.line_start:
                if chunk.startswith(b"."):
                    chunk = chunk[1:]
                if self.in_header:
                    self._header_line(chunk[:16] or b"x")
            self._put(chunk)
            self.line_start = False
            del buf[: len(buf) - keep]
        return None


def _run(sink, chunks):
    result = None
    try:
        for chunk in chunks:
            rest = sink.feed(chunk)
            if rest is not None:
                result = ("rest", rest)
                break
    except BareLF:
        result = "bare LF"
    out = sink.out.getvalue()
    return result, out, sink.size, sink.hops, sink.in_header, sink.line_start, bytes(sink.buf)


ATOMS = [
    b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"Received: x", b"Delivered-To: y",
    b"x" * 50, b"\r\n.\r\n", b".\r\n", b"\r\n\r\n", b"RECEIVED", b"z" * 70000,
]  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_same_as_line_by_line(seed):
    rnd = random.Random(seed)
    weights = [0.3 if len(a) > 1000 else 5 for a in ATOMS]
    for _ in range(1500):
        data = b"".join(rnd.choices(ATOMS, weights=weights, k=rnd.randrange(1, 50)))
        if rnd.random() < 0.5:
            data = b"Subject: s\r\n\r\n" + data
        cuts = sorted(rnd.sample(range(len(data) + 1), min(len(data) + 1, rnd.randrange(5))))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        databytes = rnd.choice([0, 0, 10, 100, 1000])
        allow = rnd.random() < 0.2
        want = _run(LineSink(databytes, allow), chunks)
        got = _run(DataSink(io.BytesIO(), databytes, allow), chunks)
        assert got == want, (chunks, databytes, allow)


def test_body_in_one_piece():
    sink = DataSink(io.BytesIO())
    body = b"Received: a\r\nX: y\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n"
    assert sink.feed(body) == b"QUIT\r\n"
    assert sink.out.getvalue() == b"Received: a\nX: y\n\n.dot\nline\n"
    assert sink.hops == 1 and sink.size == len(sink.out.getvalue())


def test_bare_lf_in_body_after_good_lines():
    sink = DataSink(io.BytesIO())
    with pytest.raises(BareLF):
        sink.feed(b"X: y\r\n\r\nok\r\nbad\nmore\r\n.\r\n")
    assert sink.out.getvalue() == b"X: y\n\nok\n"
