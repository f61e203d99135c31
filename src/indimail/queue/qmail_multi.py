"""qmail-multi: choose one of the queues, check free space, then queue.

Queue n = ``QUEUE_BASE/queue<n>``, n = random % QUEUE_COUNT + QUEUE_START,
unless QUEUEDIR pins it.  ``MIN_FREE`` (bytes) refuses with 53 when the
queue's file system has less room.  When the next program is ours it runs
in this process; ``QUEUEPROG`` naming another program is exec'd with
QUEUEDIR set, as the original execs qmail-queue.
"""

from __future__ import annotations

import os

from indimail.queue import codes
from indimail.queue.qmail_queue import QueueError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from indimail.core.paths import Paths, Places


def choose_queue(environ: Mapping[str, str], p: Paths | Places) -> str:
    """QUEUEDIR if set, else a random queue of QUEUE_START..+QUEUE_COUNT
    (a string: see core/paths on what pathlib costs at start)."""
    qd = environ.get("QUEUEDIR")
    if qd:
        return qd
    count = p.queue_count
    if count < 1:
        raise QueueError(codes.SYSTEM_MISCONFIG, f"QUEUE_COUNT={count} must be at least 1")
    n = int.from_bytes(os.urandom(4), "little") % count + p.queue_start
    return f"{p.queue_base}/queue{n}"


def check_min_free(queuedir: str | Path, environ: Mapping[str, str]) -> None:
    """Exit 53 (disk full) when free bytes on the queue's fs < MIN_FREE."""
    raw = environ.get("MIN_FREE")
    if not raw:
        return
    try:
        min_free = int(raw)
    except ValueError:
        raise QueueError(codes.CONFIG_ERR, f"MIN_FREE={raw!r} is not a number") from None
    try:
        st = os.statvfs(queuedir)
    except OSError as exc:
        raise QueueError(
            codes.CHDIR, f"trouble doing cd to queue directory {queuedir}: {exc.strerror}"
        ) from None
    if st.f_bavail * st.f_frsize < min_free:
        raise QueueError(codes.WRITE_ERR, f"free space on {queuedir} below MIN_FREE={min_free}")


def main(argv: list[str]) -> int:
    """qmail-multi: pick a queue, then run qmail-queue (in-process when ours)."""
    from indimail.core import paths as _paths
    from indimail.queue import qmail_queue

    environ = os.environ
    p = _paths.get()
    try:
        queuedir = choose_queue(environ, p)
        check_min_free(queuedir, environ)
    except QueueError as exc:
        os.write(2, f"qmail-multi: {exc.reason}\n".encode(errors="replace"))
        return exc.code
    environ["QUEUEDIR"] = str(queuedir)
    prog = environ.get("QUEUEPROG") or (argv[1] if len(argv) > 1 else "")
    if prog and os.path.basename(prog) != "qmail-queue":
        args = argv[1:] if len(argv) > 1 else [prog]
        try:
            os.execv(args[0], args)
        except OSError as exc:
            os.write(2, f"qmail-multi: unable to exec {args[0]}: {exc.strerror}\n".encode())
            return codes.EXEC_QMAILQUEUE
    return qmail_queue.main(["qmail-queue"])
