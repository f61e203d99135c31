"""qmail-clean: remove queue files on qmail-send's behalf, as the queue owner.

Requests on fd 0, NUL-terminated: ``foop/<id>`` removes ``intd/<id>`` and
``mess/<split>/<id>``; ``todo/<id>`` removes ``intd/<id>`` and
``todo/<id>``.  One byte answers on fd 1: ``+`` done (a missing file counts
as done), ``!`` failed, ``x`` bad request.  Every 30 requests stale
``pid/`` files older than OSSIFIED seconds (default 129600) are removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from indimail.core.errors import Fatal
from indimail.queue.layout import Layout
from indimail.send.todo import queue_paths

OSSIFIED = 129600


def handle(layout: Layout, request: bytes) -> bytes:
    """Carry out one request; return the reply byte."""
    if len(request) < 7 or len(request) > 100:
        return b"x"
    kind, _, number = request.partition(b"/")
    if kind not in (b"foop", b"todo") or not number.isdigit():
        return b"x"
    inode = int(number)
    qpath = queue_paths(layout)
    targets = (qpath("intd", inode), qpath("mess" if kind == b"foop" else "todo", inode))
    for path in targets:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:
            return b"!"
    return b"+"


def clean_pid_dir(layout: Layout, ossified: int, now: float | None = None) -> None:
    now = time.time() if now is None else now
    piddir = layout.root / "pid"
    try:
        names = os.listdir(piddir)
    except OSError:
        return
    for name in names:
        path = piddir / name
        try:
            if os.stat(path).st_atime + ossified < now:
                os.unlink(path)
        except OSError:
            continue


def serve(layout: Layout, infd: int = 0, outfd: int = 1) -> int:
    """Answer requests until EOF on ``infd``."""
    ossified = int(os.environ.get("OSSIFIED") or OSSIFIED)
    buf = b""
    count = 0
    while True:
        try:
            chunk = os.read(infd, 4096)
        except InterruptedError:
            continue
        except OSError as exc:  # not qmail-send's pipe (closed by hand)
            raise Fatal(111, f"unable to read requests: {exc.strerror}") from None
        if not chunk:
            return 0
        buf += chunk
        while b"\0" in buf:
            request, buf = buf.split(b"\0", 1)
            _answer(outfd, handle(layout, request))
            count += 1
            if count % 30 == 0:
                clean_pid_dir(layout, ossified)
        if len(buf) > 100:
            buf = b""
            _answer(outfd, b"x")


def _answer(outfd: int, data: bytes) -> None:
    """One answer to qmail-send (a byte or two: one write does it)."""
    try:
        os.write(outfd, data)
    except BrokenPipeError:
        raise  # qmail-send is gone: the dispatcher ends quietly
    except OSError as exc:
        raise Fatal(111, f"unable to write answers: {exc.strerror}") from None


def main(argv: list[str]) -> int:
    """qmail-clean: serve requests for QUEUEDIR on fds 0/1."""
    from indimail.core import paths as _paths

    p = _paths.get()
    queuedir = Path(os.environ.get("QUEUEDIR") or p.queue_dirs()[0])
    return serve(Layout(queuedir, split=p.conf_split, bigtodo=p.bigtodo))
