"""tai64n and tai64nlocal: put and read ``@<tai64n>`` labels."""

from __future__ import annotations

import os

from indimail.core import tai64n
from indimail.core.errors import Fatal

_HEX = b"0123456789abcdef"


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(1, view)
        except OSError as exc:
            raise Fatal(111, f"unable to write output: {exc.strerror}") from None
        view = view[n:]


def _read() -> bytes:
    try:
        return os.read(0, 65536)
    except OSError as exc:
        raise Fatal(111, f"unable to read input: {exc.strerror}") from None


def stamp_lines(data: bytes, at_line_start: bool, label: bytes) -> tuple[bytes, bool]:
    """Prefix each line start in ``data`` with ``label`` + space."""
    out = bytearray()
    start = 0
    while start < len(data):
        if at_line_start:
            out += label + b" "
        nl = data.find(b"\n", start)
        if nl < 0:
            out += data[start:]
            return bytes(out), False
        out += data[start : nl + 1]
        start = nl + 1
        at_line_start = True
    return bytes(out), at_line_start


def tai64n_main() -> int:
    at_start = True
    while True:
        data = _read()
        if not data:
            return 0
        out, at_start = stamp_lines(data, at_start, tai64n.now_label())
        _write(out)


def convert_line(line: bytes) -> bytes:
    """tai64nlocal on one line (a leading ``@`` + lowercase hex digits)."""
    if not line.startswith(b"@"):
        return line
    i = 1
    while i < len(line) and i <= 24 and line[i] in _HEX:
        i += 1
    digits = line[1:i]
    value = int(digits, 16) if digits else 0
    secs = (value >> 32) - tai64n.TAI_OFFSET if len(digits) > 8 else -tai64n.TAI_OFFSET
    nanos = value & 0xFFFFFFFF if len(digits) > 8 else value
    try:
        text = tai64n.format_local(secs, nanos % 1_000_000_000)
    except (OverflowError, OSError, ValueError):
        return line
    return text + line[i:]


def tai64nlocal_main() -> int:
    pending = b""
    while True:
        data = _read()
        if not data:
            if pending:
                _write(convert_line(pending))
            return 0
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        if lines:
            _write(b"".join(convert_line(ln) + b"\n" for ln in lines))


def main(argv: list[str]) -> int:
    if os.path.basename(argv[0]) == "tai64nlocal":
        return tai64nlocal_main()
    return tai64n_main()
