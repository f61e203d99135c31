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

import errno
import os
import stat
import time

from indimail.core import paths as _paths
from indimail.core.errors import Fatal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path

# Temporary "config unreadable" exit code of qmail-queue and friends.
EXIT_CONFIG = 55


class ControlError(Fatal):
    """A control file exists but is unreadable or malformed."""

    def __init__(self, message: str, code: int = 111) -> None:
        super().__init__(code, message)


def control_path(name: str, controldir: Path | None = None) -> Path:
    """Where control ``name`` lives."""
    from pathlib import Path  # not at the top: see core/paths (start cost)

    return Path(_str_path(name, controldir))


# Contents of control files, kept per process and validated on every read by
# one stat(): a long-lived process (a qmail-smtpd pool worker serving one
# connection after another) sees an admin's edit on its next read exactly as
# a program exec'd per connection would.  An absent file is stat'ed again on
# every read, never remembered.  The key is (dev, ino, size, mtime_ns,
# ctime_ns); ctime cannot be set back by anyone, and a file whose ctime is
# not older than RACY_NS when it is read is not kept at all (the "racy git"
# rule): an edit within the same timestamp tick, even one that keeps the
# size, can therefore never be missed.
RACY_NS = 2_000_000_000
CACHE_MAX = 1 << 20  # larger files are read every time
_cache: dict[str, tuple[tuple[int, int, int, int, int], bytes, dict]] = {}


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(st: os.stat_result, now_ns: int) -> bool:
    """Unchanged for RACY_NS before ``now_ns``: safe to remember by its key."""
    return st.st_ctime_ns < now_ns - RACY_NS and st.st_mtime_ns < now_ns - RACY_NS


def stable_key(path: str) -> tuple[int, int, int, int, int] | None:
    """The stat key of ``path`` when what was read from it may be kept
    under that key (the rule above); None if it is missing or just changed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return settled_key(st)


def settled_key(st: os.stat_result) -> tuple[int, int, int, int, int] | None:
    """:func:`stable_key` of a file already open (``os.fstat``)."""
    return _key(st) if _settled(st, time.time_ns()) else None


# Absent files within a session.  qmail-smtpd asks for ~20 control files
# per connection that most sites never create (badmailfrom, goodrcptto.cdb,
# tarpitcount...), one failed stat each.  While a pooled session runs
# (:func:`session`), a file found absent is remembered with the stat key of
# its directory as it was before the file was looked for (stable_key, as for
# files): creating, renaming or linking any file there changes that key,
# so one stat of the directory per session stands for all of them.  As for
# files, a directory changed within RACY_NS is not trusted, and a dangling
# symlink is never remembered (its target may appear elsewhere).  Outside a
# session nothing changes: every read stats its file.
_absent: dict[str, tuple[int, int, int, int, int]] = {}
_session_dirs: dict[str, tuple[int, int, int, int, int] | None] | None = None


class session:  # lower case: used as ``with control.session():``
    """One connection's view of the control directory: see ``_absent``."""

    def __enter__(self) -> None:
        global _session_dirs
        _session_dirs = {}

    def __exit__(self, *_exc: object) -> None:
        global _session_dirs
        _session_dirs = None


def _known_absent(spath: str) -> tuple[bool, tuple[int, int, int, int, int] | None]:
    """(still absent for sure, the directory key to remember it under);
    (False, None) outside a session or when the directory is not settled."""
    dirs = _session_dirs
    if dirs is None:
        return False, None
    directory = _dir_of(spath)
    if directory in dirs:
        dkey = dirs[directory]
    else:  # the directory's one stat of this session
        dkey = stable_key(directory)
        dirs[directory] = dkey
    if dkey is None:
        return False, None
    if _absent.get(spath) == dkey:
        return True, dkey
    _absent.pop(spath, None)
    return False, dkey


def _dir_of(spath: str) -> str:
    head = spath.rpartition("/")[0]  # os.path.dirname, without its overhead
    return head or ("/" if spath.startswith("/") else ".")


def _note_absent(spath: str, dkey: tuple[int, int, int, int, int] | None) -> None:
    """``spath`` was just found missing: remember it under its directory's
    key, and record that for :class:`reads` (a dangling symlink neither)."""
    if dkey is not None and os.path.islink(spath):
        dkey = None
    if dkey is not None:
        _absent[spath] = dkey
    _dep_absent(spath, dkey)


# What the control reads of a computation depended on (:class:`reads`):
# ("f", path) -> the stat key its contents were kept under; ("d", directory)
# -> the directory's stat key when a file there was found absent; a None
# value: something that cannot be checked that way (a file changed in the
# last RACY_NS, an absent file outside a session), so the result must not
# be reused.
_deps: dict[tuple[str, str], tuple[int, int, int, int, int] | None] | None = None


def _dep_file(spath: str, key: tuple[int, int, int, int, int] | None) -> None:
    if _deps is not None:
        _deps[("f", spath)] = key


def _dep_absent(spath: str, dkey: tuple[int, int, int, int, int] | None) -> None:
    if _deps is not None:
        _deps[("d", _dir_of(spath))] = dkey


class reads:  # lower case: used as ``with control.reads() as deps:``
    """Record what every control read inside depended on, so that a value
    computed from control files can be reused while :func:`unchanged` says
    none of them changed (qmail-smtpd's per-connection settings in a pool
    worker).  Reads of files changed within RACY_NS, and absent files
    outside a :class:`session`, make the record unusable, never wrong."""

    def __enter__(self) -> dict:
        global _deps
        self._saved = _deps
        _deps = {}
        return _deps

    def __exit__(self, *_exc: object) -> None:
        global _deps
        _deps = self._saved


def unchanged(deps: dict) -> bool:
    """Whether every read recorded by :class:`reads` would find the same
    now: each file present then has the same stat key, and each directory
    where a file was absent has the same stat key (creating, renaming or
    linking any file there changes it).  One stat() per entry."""
    return all(key is not None and stable_key(path) == key for (_, path), key in deps.items())


def _str_path(name: str, controldir: Path | None) -> str:
    if name.startswith(("/", ".")):
        return name
    return f"{controldir or _paths.places().controldir}/{name}"


def _lookup(name: str, controldir: Path | None) -> tuple[bytes, dict | None] | None:
    """(contents, parse cache or None) of control ``name``; None if missing."""
    spath = _str_path(name, controldir)
    gone, dkey = _known_absent(spath)
    if gone:
        _dep_absent(spath, dkey)
        return None
    try:
        st = os.stat(spath)
    except FileNotFoundError:
        _cache.pop(spath, None)
        _note_absent(spath, dkey)
        return None
    except OSError:
        st = None  # open() below reports it
    if st is not None:
        hit = _cache.get(spath)
        if hit is not None and hit[0] == _key(st):
            _dep_file(spath, hit[0])
            return hit[1], hit[2]
    try:
        fd = os.open(spath, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        _cache.pop(spath, None)
        _dep_file(spath, None)
        return None
    except OSError as exc:
        path = control_path(name, controldir)
        raise ControlError(f"unable to read control file {path}: {exc.strerror}") from None
    try:
        now = time.time_ns()
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except IsADirectoryError:
        path = control_path(name, controldir)
        raise ControlError(f"unable to read control file {path}: is a directory") from None
    except OSError as exc:
        path = control_path(name, controldir)
        raise ControlError(f"unable to read control file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if st.st_size == len(data) <= CACHE_MAX and stat.S_ISREG(st.st_mode) and _settled(st, now):
        parsed: dict = {}
        _cache[spath] = (_key(st), data, parsed)
        _dep_file(spath, _key(st))
        return data, parsed
    _cache.pop(spath, None)
    _dep_file(spath, None)
    return data, None


def _read_bytes(name: str, controldir: Path | None) -> bytes | None:
    found = _lookup(name, controldir)
    return None if found is None else found[0]


def clear_cache() -> None:
    """Forget every remembered control file (tests; never needed for correctness)."""
    _cache.clear()
    _absent.clear()


def _strip(line: bytes) -> bytes:
    return line.rstrip(b" \t\r\n")


def read_line(
    name: str, default: str | None = None, *, controldir: Path | None = None, flagme: bool = False
) -> str | None:
    """First line of ``name``; ``default`` (or ``me`` with flagme) if missing."""
    found = _lookup(name, controldir)
    if found is None:
        if flagme:
            me = read_line("me", controldir=controldir)
            if me is not None:
                return me
        return default
    data, parsed = found
    if parsed is not None:
        line = parsed.get("line")
        if line is not None:
            return line
    first = data.split(b"\n", 1)[0]
    line = _strip(first).decode("utf-8", "surrogateescape")
    if parsed is not None:
        parsed["line"] = line
    return line


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
    found = _lookup(name, controldir)
    if found is None:
        if flagme:
            me = read_line("me", controldir=controldir)
            if me is not None:
                return [me]
        return None
    return list(_items(*found))


def _items(data: bytes, parsed: dict | None) -> tuple[str, ...]:
    if parsed is not None:
        items = parsed.get("list")
        if items is not None:
            return items
    out = []
    for raw in data.split(b"\n"):
        line = _strip(raw)
        if line and not line.startswith(b"#"):
            out.append(line.decode("utf-8", "surrogateescape"))
    items = tuple(out)
    if parsed is not None:
        parsed["list"] = items
    return items


def read_list_as(name: str, tag: str, build, *, controldir: Path | None = None):
    """``build(items)`` for list file ``name`` (None if missing), remembered
    with the file's contents while the file is unchanged: the result is
    shared, so ``build`` must return something its callers never modify."""
    found = _lookup(name, controldir)
    if found is None:
        return None
    data, parsed = found
    if parsed is not None:
        value = parsed.get(tag, parsed)
        if value is not parsed:
            return value
    value = build(list(_items(data, parsed)))
    if parsed is not None:
        parsed[tag] = value
    return value


def exists(name: str, *, controldir: Path | None = None) -> bool:
    """Whether control ``name`` exists (Path.exists: a missing directory on
    the way is False, other errors such as EACCES are raised)."""
    spath = _str_path(name, controldir)
    gone, dkey = _known_absent(spath)
    if gone:
        _dep_absent(spath, dkey)
        return False
    try:
        st = os.stat(spath)
    except FileNotFoundError:
        _note_absent(spath, dkey)
        return False
    except NotADirectoryError:
        _dep_file(spath, None)
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EBADF):
            _dep_file(spath, None)
            return False
        raise
    _dep_file(spath, settled_key(st))
    return True


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
