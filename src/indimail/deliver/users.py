"""Who receives mail for a local part: qmail-lspawn's address lookup.

1. ``ASSIGNDIR/cdb`` (built by qmail-newu from ``ASSIGNDIR/assign``):
   the key ``!`` + lower-cased local + NUL for ``=local:...`` lines; then
   ``!`` + each shorter lower-cased prefix of local that ends in one of the
   break characters listed under the key ``""`` (``+prefix:...`` lines),
   longest first, and finally ``!`` alone (``+:...``).  A wildcard match
   appends the rest of local (original case) to the entry's ext.
2. Else the password database, as qmail-getpw: ``user`` or ``user-ext``
   (break ``-``) for an account with uid != 0 whose home exists and is
   owned by it; otherwise the ``alias`` role's account with ext = local.

qmail-lspawn's numeric failures (QLX_*) are kept for the spawner's report.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from indimail.core import cdb
from indimail.core.paths import Paths
from indimail.deliver.mailfile import is_temp

# qmail-lspawn / qmail-getpw exit codes (qlx.h)
QLX_USAGE = 112
QLX_ROOT = 113
QLX_NFS = 115
QLX_NOALIAS = 116
QLX_CDB = 117
QLX_SYS = 118
QLX_NOMEM = 119
QLX_EXECSOFT = 120
QLX_EXECPW = 121
QLX_EXECHARD = 126
QLX_UIDGID = 127

BREAK = "-"  # conf-break
USERNAME_MAX = 32  # qmail-getpw's buffer: usernames shorter than this


@dataclass(frozen=True)
class UserEntry:
    """The ``nughde`` record: who delivers, where, and the .qmail suffix."""

    user: str
    uid: int
    gid: int
    home: str
    dash: str
    ext: str

    def nughde(self) -> bytes:
        """qmail-getpw's output form: the six fields, each NUL-terminated."""
        fields = (self.user, str(self.uid), str(self.gid), self.home, self.dash, self.ext)
        return b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)


class UserLookupError(Exception):
    """The lookup could not be done; ``code`` is the QLX value."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def parse_record(data: bytes, where: str) -> UserEntry:
    """Parse ``user\\0uid\\0gid\\0home\\0dash\\0ext`` (a users/cdb value,
    with any wildcard rest already appended)."""
    fields = data.split(b"\0", 5)
    if len(fields) < 6:
        raise UserLookupError(QLX_CDB, f"{where}: record has {len(fields)} fields, not 6")
    user, uid, gid, home, dash, ext = fields
    if ext.endswith(b"\0"):
        ext = ext[:-1]
    if not uid.isdigit() or not gid.isdigit():
        raise UserLookupError(QLX_CDB, f"{where}: uid/gid not numeric in {data!r}")
    return UserEntry(_dec(user), int(uid), int(gid), _dec(home), _dec(dash), _dec(ext))


def lookup_cdb(local: str, cdbpath: Path) -> UserEntry | None:
    """Step 1: users/cdb.  None if there is no cdb or no entry matches."""
    try:
        reader = cdb.Reader(cdbpath)
    except FileNotFoundError:
        return None
    except (OSError, cdb.CdbError) as exc:
        raise UserLookupError(QLX_CDB, f"unable to read {cdbpath}: {exc}") from None
    with reader:
        return _lookup_reader(local, reader, cdbpath)


def _lookup_reader(local: str, reader: cdb.Reader, cdbpath: Path) -> UserEntry | None:
    """users/cdb lookup in an open database (see the module text)."""
    lower = b"!" + _enc(local).lower() + b"\0"
    local_b = _enc(local)
    try:
        wild = reader.get(b"")
        if wild is None:
            raise UserLookupError(QLX_CDB, f"{cdbpath}: no wildcard list (empty key)")
        i = len(lower)
        flagwild = False
        while i:
            if not flagwild or i == 1 or lower[i - 1 : i] in _chars(wild):
                data = reader.get(lower[:i])
                if data is not None:
                    if flagwild:
                        data += local_b[i - 1 :]
                    return parse_record(data, str(cdbpath))
            i -= 1
            flagwild = True
    except cdb.CdbError as exc:
        raise UserLookupError(QLX_CDB, f"{cdbpath}: {exc}") from None
    return None


class CdbCache:
    """users/cdb answers for a long-running spawner (qmail-lspawn).

    The spawner asks before it forks a delivery, so the child need not
    open, map and search the database again for every message.  Answers
    are only kept while ``stat`` of the cdb gives the same identity
    (device, inode, size, mtime, ctime): qmail-newu renames a new file
    into place, so a rebuild is seen by the next delivery, as without the
    cache.  A small database is read into memory (never mapped: a file
    truncated in place must not be able to crash the spawner); anything
    unusual (a big or broken file, a read error) answers "unknown", and
    the child does the whole lookup itself, with the usual error codes.
    """

    MAX_BYTES = 1 << 20
    MAX_ENTRIES = 4096
    UNKNOWN = object()

    def __init__(self, cdbpath: Path) -> None:
        self.path = cdbpath
        self.ident: tuple[int, ...] | None = None
        self.reader: cdb.Reader | None = None
        self.results: dict[str, UserEntry | None] = {}

    def _refresh(self) -> bool:
        """Bring the cached database in line with the file; False if it
        cannot be used (the child must look up itself)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            ident: tuple[int, ...] = ()
        except OSError:
            return False
        else:
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if ident == self.ident:
            return self.ident == () or self.reader is not None
        self.ident, self.reader = ident, None
        self.results.clear()
        if not ident:
            return True  # no cdb: every address goes to the password database
        if st.st_size > self.MAX_BYTES:
            return False
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(self.MAX_BYTES + 1)
            if len(data) != st.st_size:
                return False  # changing under us: let the child look
            self.reader = cdb.Reader.from_bytes(data)
        except (OSError, cdb.CdbError):
            return False
        return True

    def lookup(self, local: str) -> object:
        """The users/cdb entry (None: no entry matches, or no cdb), or
        :attr:`UNKNOWN`."""
        if not self._refresh():
            return self.UNKNOWN
        if self.reader is None:
            return None
        try:
            return self.results[local]
        except KeyError:
            pass
        try:
            entry = _lookup_reader(local, self.reader, self.path)
        except UserLookupError:
            return self.UNKNOWN
        if len(self.results) >= self.MAX_ENTRIES:
            self.results.clear()
        self.results[local] = entry
        return entry


def _chars(data: bytes) -> set[bytes]:
    return {data[k : k + 1] for k in range(len(data))}


def _home_owned(pw: pwd.struct_passwd) -> bool:
    try:
        st = os.stat(pw.pw_dir)
    except OSError as exc:
        if is_temp(exc.errno):
            raise UserLookupError(QLX_NFS, f"unable to stat {pw.pw_dir}: {exc.strerror}") from None
        return False
    return st.st_uid == pw.pw_uid


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def lookup_passwd(local: str, alias: str) -> UserEntry | None:
    """Step 2, qmail-getpw: a system account, else ``alias``; None if even
    the alias account does not exist."""
    for end in range(len(local), -1, -1):
        if end < len(local) and local[end] != BREAK:
            continue
        if end >= USERNAME_MAX or not end:
            continue
        pw = _getpwnam(local[:end].lower())
        if pw is None or pw.pw_uid == 0 or not _home_owned(pw):
            continue
        if end < len(local):
            dash, ext = "-", local[end + 1 :]
        else:
            dash, ext = "", ""
        return UserEntry(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, dash, ext)
    pw = _getpwnam(alias)
    if pw is None:
        return None
    return UserEntry(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "-", local)


def find_user(local: str, p: Paths) -> UserEntry | None:
    """Who handles ``local``: users/cdb first, then the password database.

    Returns None when nothing matches and the ``alias`` account does not
    exist (qmail-lspawn reports "Unable to find alias user!", QLX_NOALIAS).
    Raises :class:`UserLookupError` (QLX_CDB, QLX_NFS) when users/cdb is
    unreadable or corrupt, or a home directory cannot be checked.
    """
    entry = lookup_cdb(local, p.assigndir / "cdb")
    if entry is not None:
        return entry
    return lookup_passwd(local, p.user("alias"))
