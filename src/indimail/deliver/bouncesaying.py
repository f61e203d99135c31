"""bouncesaying: bounce the message with a text, maybe only if a program
says so.

``bouncesaying error [program [arg ...]]``: without a program, print
``error`` and exit 100 (a permanent failure for qmail-local, so the text
ends up in the bounce).  With a program: run it (message on its stdin);
exit 0 of the program bounces, 111 defers, anything else lets delivery
go on (exit 0).
"""

from __future__ import annotations

import subprocess
import sys

from indimail.deliver.mailfile import is_temp

FATAL = "bouncesaying: fatal: "


def main(argv: list[str]) -> int:
    """bouncesaying error [ program [ arg ... ] ]"""
    if len(argv) < 2:
        sys.stderr.write("bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]\n")
        return 100
    if len(argv) > 2:
        try:
            code = subprocess.call(argv[2:], close_fds=False)
        except OSError as exc:
            code = 111 if is_temp(exc.errno) else 100
        if code < 0:
            sys.stderr.write(FATAL + "child crashed\n")
            return 111
        if code == 111:
            sys.stderr.write(FATAL + "temporary child error\n")
            return 111
        if code != 0:
            return 0
    sys.stderr.write(argv[1] + "\n")
    return 100
