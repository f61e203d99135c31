"""condredirect: forward the message elsewhere if a program says so.

``condredirect [-r] newaddress program [arg ...]``: run the program with
the message on its stdin.  Without ``-r``, exit 0 of the program forwards
the message to ``newaddress`` (with the DTLINE and QQEH lines from the
environment, envelope sender SENDER) and exits 99, so qmail-local skips
the rest of the .qmail file; any other code but 100/111 lets delivery go
on.  With ``-r`` the sense is reversed: a nonzero code (not 100/111)
forwards.  100 and 111 from the program are passed on.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from indimail.deliver.mailfile import is_temp

FATAL = "condredirect: fatal: "
USAGE = "condredirect: usage: condredirect [ -r ] newaddress program [ arg ... ]"


class _Message:
    def __init__(self, head: bytes, fd: int) -> None:
        self.head = head
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            return data
        return os.read(self.fd, 65536 if n is None or n < 0 else n)


def _die(code: int, text: str) -> int:
    sys.stderr.write(FATAL + text + "\n")
    return code


def main(argv: list[str]) -> int:
    """condredirect [ -r ] newaddress program [ arg ... ]"""
    args = argv[1:]
    reverse = False
    if args and args[0].startswith("-"):
        if args[0] != "-r":
            sys.stderr.write(f"condredirect: Invalid option {args[0]}\n{USAGE[14:]}\n")
            return 100
        reverse = True
        args = args[1:]
    if len(args) < 2:
        sys.stderr.write(USAGE + "\n")
        return 100
    newaddress, program = args[0], args[1:]
    try:
        code = subprocess.call(program, close_fds=False)
    except OSError as exc:
        code = 111 if is_temp(exc.errno) else 2 if exc.errno == errno.ENOENT else 100
    if code < 0:
        return _die(111, "child crashed")
    if code == 100:
        return _die(100, "permanent child error")
    if code == 111:
        return _die(111, "temporary child error")
    if (code == 0) == reverse:
        return 0
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError as exc:
        return _die(111, f"unable to rewind: {exc.strerror}")
    sender = os.environ.get("SENDER")
    if sender is None:
        return _die(100, "SENDER not set")
    dtline = os.environ.get("DTLINE")
    if dtline is None:
        return _die(100, "DTLINE not set")
    head = (dtline + os.environ.get("QQEH", "")).encode("utf-8", "surrogateescape")
    from indimail.queue.submit import SubmitError, submit

    try:
        queued = submit(
            _Message(head, 0),  # type: ignore[arg-type]
            sender.encode("utf-8", "surrogateescape"),
            [newaddress.encode("utf-8", "surrogateescape")],
        )
    except SubmitError as exc:
        text = exc.text[1:] if exc.text[:1] in ("D", "Z") else exc.text
        return _die(100 if exc.text.startswith("D") else 111, text)
    sys.stderr.write(f"condredirect: qp {queued.qp}\n")
    return 99
