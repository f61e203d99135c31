"""Control files with qmail's semantics.

* scalar files: the first line, trailing blanks/tabs/newline removed;
* list files: every line, trailing blanks removed, blank lines and lines
  starting with ``#`` skipped;
* a missing file gives the default (or ``me`` where the original falls back
  to it); a file that exists but cannot be read is an error, never a default;
* ``NAME.cdb`` (key = lower-cased item) is consulted before ``NAME``.

Names that start with ``/`` or ``.`` are paths; others live in CONTROLDIR.
"""

from __future__ import annotations

import os
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal

# Temporary "config unreadable" exit code of qmail-queue and friends.
EXIT_CONFIG = 55


class ControlError(Fatal):
    """A control file exists but is unreadable or malformed."""

    def __init__(self, message: str, code: int = 111) -> None:
        super().__init__(code, message)


def control_path(name: str, controldir: Path | None = None) -> Path:
    """Where control ``name`` lives."""
    if name.startswith(("/", ".")):
        return Path(name)
    return (controldir or _paths.get().controldir) / name


def _read_bytes(name: str, controldir: Path | None) -> bytes | None:
    path = control_path(name, controldir)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ControlError(f"unable to read control file {path}: is a directory") from None
    except OSError as exc:
        raise ControlError(f"unable to read control file {path}: {exc.strerror}") from None


def _strip(line: bytes) -> bytes:
    return line.rstrip(b" \t\r\n")


def read_line(
    name: str, default: str | None = None, *, controldir: Path | None = None, flagme: bool = False
) -> str | None:
    """First line of ``name``; ``default`` (or ``me`` with flagme) if missing."""
    data = _read_bytes(name, controldir)
    if data is None:
        if flagme:
            me = read_line("me", controldir=controldir)
            if me is not None:
                return me
        return default
    first = data.split(b"\n", 1)[0]
    return _strip(first).decode("utf-8", "surrogateescape")


def read_int(name: str, default: int, *, controldir: Path | None = None) -> int:
    """First line of ``name`` as an integer.

    The original ignores an unparsable value; we refuse it, naming the file,
    because a typo in ``databytes`` or ``concurrencyremote`` silently
    reverting to a default is a trap.
    """
    line = read_line(name, controldir=controldir)
    if line is None or line == "":
        return default
    try:
        return int(line.split()[0])
    except (ValueError, IndexError):
        path = control_path(name, controldir)
        raise ControlError(f"{path}: line 1: {line!r} is not a number") from None


def read_list(
    name: str, *, controldir: Path | None = None, flagme: bool = False
) -> list[str] | None:
    """Items of a list file; None if missing (or ``[me]`` with flagme)."""
    data = _read_bytes(name, controldir)
    if data is None:
        if flagme:
            me = read_line("me", controldir=controldir)
            if me is not None:
                return [me]
        return None
    items = []
    for raw in data.split(b"\n"):
        line = _strip(raw)
        if line and not line.startswith(b"#"):
            items.append(line.decode("utf-8", "surrogateescape"))
    return items


def read_cdb_or_list(name: str, *, controldir: Path | None = None) -> set[str] | None:
    """Entries of list ``name`` lower-cased, for membership tests."""
    items = read_list(name, controldir=controldir)
    if items is None:
        return None
    return {item.lower() for item in items}


def cdb_contains(name: str, key: str, *, controldir: Path | None = None) -> bool | None:
    """Look ``key`` (lower-cased) up in ``NAME.cdb``; None if there is no cdb."""
    from indimail.core import cdb

    path = control_path(name + ".cdb", controldir)
    try:
        reader = cdb.Reader(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ControlError(f"unable to read {path}: {exc.strerror}") from None
    except cdb.CdbError as exc:
        raise ControlError(f"{path}: {exc}") from None
    with reader:
        return reader.get(key.lower().encode("utf-8", "surrogateescape")) is not None


def me(controldir: Path | None = None) -> str:
    """The FQDN from control ``me``, else the host name."""
    value = read_line("me", controldir=controldir)
    if value:
        return value
    return os.uname().nodename
