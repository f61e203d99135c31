"""qmail-cdb: turn a list control file into a cdb for quick lookups.

``qmail-cdb [-m] filename``     CONTROLDIR/filename -> filename.cdb,
                                 key = the lower-cased line
``qmail-cdb -r [-m] [filename]`` SYSCONFDIR/users/filename (default
                                 ``recipients``) -> filename.cdb, key =
                                 ``:`` + the lower-cased address (what the
                                 ``recipients`` extension of qmail-smtpd and
                                 fastforward's cdbs use)

Lines: trailing blanks, tabs and the newline are removed; empty lines and
lines starting with ``#`` are skipped; data is empty.  The cdb is written
to ``filename.tmp``, synced and renamed over ``filename.cdb`` (readers see
the old or the new one).  ``-m`` then renames ``filename`` to
``filename.bak``.  Exit 100 for usage errors, 111 for trouble (the old cdb
stays), as the original.
"""

from __future__ import annotations

import getopt
import os
from pathlib import Path

from indimail.core import cdb
from indimail.core import paths as _paths
from indimail.core.errors import EXIT_TEMP, Fatal, UsageError

USAGE = "usage: qmail-cdb [-r] [-m] filename"


def keys(data: bytes, recipients: bool) -> list[bytes]:
    """The cdb keys of a list file's bytes, in file order."""
    out = []
    for raw in data.split(b"\n"):
        line = raw.rstrip(b" \t\n")
        if not line or line.startswith(b"#"):
            continue
        out.append((b":" + line if recipients else line).lower())
    return out


def build(src: Path, recipients: bool = False, move: bool = False) -> Path:
    """Write ``src``.cdb from list file ``src``; returns the cdb's path."""
    target = Path(str(src) + ".cdb")
    tmp = Path(str(src) + ".tmp")
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"fatal: unable to read {src}: {exc.strerror}") from None
    old = os.umask(0o033)
    try:
        cdb.make_from_pairs(target, tmp, ((k, b"") for k in keys(data, recipients)))
    except (OSError, cdb.CdbError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise Fatal(EXIT_TEMP, f"fatal: unable to write to {tmp}: {why}") from None
    finally:
        os.umask(old)
    if move:
        bak = Path(str(src) + ".bak")
        try:
            os.rename(src, bak)
        except OSError as exc:
            raise Fatal(
                EXIT_TEMP, f"fatal: unable to move {src} to {bak}: {exc.strerror}"
            ) from None
    return target


def main(argv: list[str]) -> int:
    try:
        opts, args = getopt.getopt(argv[1:], "rm")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{USAGE}") from None
    recipients = any(o == "-r" for o, _ in opts)
    move = any(o == "-m" for o, _ in opts)
    if len(args) > 1 or (not args and not recipients):
        raise UsageError(USAGE)
    name = args[0] if args else "recipients"
    p = _paths.get()
    if recipients:
        workdir = Path(os.environ.get("SYSCONFDIR") or p.sysconfdir) / "users"
    else:
        workdir = Path(os.environ.get("CONTROLDIR") or p.controldir)
    if not workdir.is_dir():
        raise Fatal(EXIT_TEMP, f"fatal: unable to chdir to {workdir}: no such directory")
    build(workdir / name, recipients, move)
    return 0
