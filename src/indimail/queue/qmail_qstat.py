"""qmail-qstat: how many messages wait, summed over all queues.

The two lines of classic qmail's qmail-qstat::

    messages in queue: N
    messages in queue but not yet preprocessed: M

N counts the message files (``mess/``), M the entries of ``todo/``, over the
queues ``QUEUE_BASE/queue<n>`` (n = QUEUE_START..+QUEUE_COUNT-1) and the
extra queues (``nqueue``, ``slowq``, ``qmta``) that exist, as qmail-qread
reads them.  Read-only; a configured queue that is missing is fatal (111).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from indimail.core import envdir
from indimail.core import paths as _paths
from indimail.core.errors import Fatal
from indimail.queue.layout import Layout
from indimail.queue.qmail_qread import queue_list

PROG = "qmail-qstat"


def count_entries(layout: Layout, subdir: str) -> int:
    """Numeric names in ``subdir`` (all split parts) of one queue."""
    total = 0
    for d in layout.subdirs(subdir):
        try:
            names = os.listdir(d)
        except OSError as exc:
            raise Fatal(111, f"unable to opendir {d}: {exc.strerror}") from None
        total += sum(1 for n in names if n.isdigit())
    return total


def queue_stat(queues: list[Path], split: int, bigtodo: int) -> tuple[int, int]:
    """(messages, not yet preprocessed) summed over ``queues``."""
    mess = todo = 0
    for qdir in queues:
        layout = Layout(root=qdir, split=split, bigtodo=bigtodo)
        mess += count_entries(layout, "mess")
        todo += count_entries(layout, "todo")
    return mess, todo


def main(argv: list[str]) -> int:
    """qmail-qstat (arguments are ignored, as by the original)."""
    try:
        p = _paths.get()
        if envdir.apply_defaultqueue(p.controldir):
            p = _paths.load()
        mess, todo = queue_stat(queue_list(p), p.conf_split, p.bigtodo)
    except Fatal as exc:
        sys.stderr.write(f"{PROG}: fatal: {exc.message}\n")
        return exc.code
    sys.stdout.write(
        f"messages in queue: {mess}\nmessages in queue but not yet preprocessed: {todo}\n"
    )
    return 0
