"""preline: feed a program the message with the delivery lines on top.

``preline [-frde] cmd [arg ...]`` runs ``cmd`` with the UFLINE
(``From `` line), RPLINE (Return-Path), DTLINE (Delivered-To) and QQEH
texts from qmail-local's environment in front of the message on its
stdin; ``-f -r -d -e`` leave the respective one out.  Exits with the
program's code.
"""

from __future__ import annotations

import getopt
import os
import subprocess
import sys

from indimail.deliver.mailfile import is_temp

FATAL = "preline: fatal: "


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main(argv: list[str]) -> int:
    """preline [-frde] cmd [ arg ... ]"""
    usage = "preline: usage: preline cmd [ arg ... ]\n"
    try:
        opts, args = getopt.getopt(argv[1:], "frde")
    except getopt.GetoptError:
        sys.stderr.write(usage)
        return 100
    skip = {opt[1] for opt, _ in opts}
    head = b""
    for flag, name in (("f", "UFLINE"), ("r", "RPLINE"), ("d", "DTLINE"), ("e", "QQEH")):
        if flag in skip:
            continue
        value = os.environ.get(name)
        if value is None:
            sys.stderr.write(f"{FATAL}No {name} environment variable\n")
            return 111
        head += value.encode("utf-8", "surrogateescape")
    if not args:
        sys.stderr.write(usage)
        return 100
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, close_fds=False)
    except OSError as exc:
        sys.stderr.write(f"{FATAL}unable to run {args[0]}: {exc.strerror}\n")
        return 111 if is_temp(exc.errno) else 100
    assert proc.stdin is not None
    wfd = proc.stdin.fileno()
    try:
        _write_all(wfd, head)
        while chunk := os.read(0, 65536):
            _write_all(wfd, chunk)
    except BrokenPipeError:
        pass
    except OSError as exc:
        proc.stdin.close()
        proc.wait()
        sys.stderr.write(f"{FATAL}unable to copy input: {exc.strerror}\n")
        return 111
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    code = proc.wait()
    if code < 0:
        sys.stderr.write(FATAL + "child crashed\n")
        return 111
    return code
