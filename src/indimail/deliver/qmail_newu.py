"""qmail-newu: compile ``users/assign`` into ``users/cdb``.

``qmail-newu [dir]`` works in ``dir`` (default ASSIGNDIR).  Each line up
to the final ``.`` line is ``=local:user:uid:gid:home:dash:ext:`` (exact
address) or ``+prefix:user:uid:gid:home:dash:pre:`` (wildcard).  The
database is written to ``cdb.tmp``, synced and renamed over ``cdb``, so
qmail-lspawn always sees the old or the new table.  A bad line stops the
command with exit 111 and the line's number; the old cdb stays.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError
from indimail.queue.layout import fsync_dir


class AssignError(Fatal):
    """A syntax error in users/assign (exit 111, the old cdb stays)."""

    def __init__(self, message: str) -> None:
        super().__init__(111, "fatal: " + message)


def parse_assign(data: bytes, name: str = "users/assign") -> list[tuple[bytes, bytes]]:
    """The (key, value) records of an assign file, the wildcard list last."""
    records: list[tuple[bytes, bytes]] = []
    wildchars = bytearray()
    pos = 0
    lineno = 0
    while True:
        lineno += 1
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos:nl]
        if line[:1] == b".":
            break
        where = f"bad format in {name} line {lineno}"
        if nl < 0:
            if line:
                raise AssignError(f"{where}: no newline at end of file (missing final '.' line?)")
            raise AssignError(f"{where}: missing the final '.' line")
        pos = nl + 1
        if b"\0" in line:
            raise AssignError(f"{where}: NUL byte in line")
        colon = line.find(b":")
        if colon < 0:
            raise AssignError(f"{where}: no ':' in {_show(line)}")
        if colon == 0:
            raise AssignError(f"{where}: line starts with ':'")
        if line[:1] not in (b"=", b"+"):
            raise AssignError(f"{where}: line must start with '=' or '+': {_show(line)}")
        key = (b"!" + line[1:colon]).lower()
        if line[:1] == b"+":
            if colon >= 2 and line[colon - 1 : colon] not in wildchars:
                wildchars += line[colon - 1 : colon]
        else:
            key += b"\0"
        fields = line[colon + 1 :].split(b":")
        if len(fields) < 7:
            raise AssignError(
                f"{where}: needs 6 fields after the address, each ended by ':': {_show(line)}"
            )
        user, uid, gid, home, dash, ext = fields[:6]
        if not uid.isdigit() or not gid.isdigit():
            raise AssignError(f"{where}: uid and gid must be numbers: {_show(line)}")
        if not home.startswith(b"/"):
            raise AssignError(f"{where}: home must be an absolute path: {_show(line)}")
        records.append((key, b"\0".join((user, uid, gid, home, dash, ext))))
    records.append((b"", bytes(wildchars)))
    return records


def _show(line: bytes) -> str:
    return repr(line.decode("utf-8", "backslashreplace"))


def build(assigndir: Path) -> int:
    """Compile ``assigndir/assign`` into ``assigndir/cdb``; return the count."""
    from indimail.core import cdb

    src = assigndir / "assign"
    try:
        with open(src, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise Fatal(111, f"fatal: unable to read {src}: {exc.strerror}") from None
    records = parse_assign(data, str(src))
    tmp = assigndir / "cdb.tmp"
    try:
        cdb.make_from_pairs(assigndir / "cdb", tmp, records)
    except OSError as exc:
        raise Fatal(111, f"fatal: unable to write {tmp}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # the rename is done; durability is best effort
        fsync_dir(str(assigndir))
    return len(records) - 1


def main(argv: list[str]) -> int:
    """qmail-newu [dir]"""
    if len(argv) > 2:
        raise UsageError("usage: qmail-newu [assigndir]")
    assigndir = Path(argv[1]) if len(argv) == 2 else _paths.get().assigndir
    if not assigndir.is_dir():
        raise Fatal(111, f"fatal: unable to chdir to {assigndir}")
    build(assigndir)
    return 0
