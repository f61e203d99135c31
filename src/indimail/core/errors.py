"""Errors that end a command with a one-line message and a qmail exit code.

qmail programs report trouble by exit status (0 ok, 100 permanent, 111
temporary; qmail-queue has its own table).  Commands raise :class:`Fatal`
and the dispatcher in :mod:`indimail.cli` turns it into ``prog: text`` on
stderr plus the code, so no traceback ever reaches an admin or a peer.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from typing import NoReturn

EXIT_OK = 0
EXIT_PERM = 100
EXIT_TEMP = 111


class Fatal(Exception):
    """Stop the command: print ``prog: message`` and exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UsageError(Fatal):
    """Bad option or argument; qmail-style commands exit 100."""

    def __init__(self, message: str, code: int = EXIT_PERM) -> None:
        super().__init__(code, message)


def describe_oserror(exc: OSError) -> str:
    """``path: reason`` for an OSError, as an admin wants to read it."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def exit_child(code: int) -> NoReturn:
    """End a forked child now: flush stdout and stderr (each on its own,
    errors ignored), then ``os._exit`` so none of the parent's cleanup runs."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)
