"""Preprocessing of ``todo/`` entries (todo-proc's job, done inside qmail-send).

For ``todo/<id>``: drop stale info/local/remote files; create ``info/<id>``
exclusively with the sender (and ``e``/``h`` records); classify each
recipient into ``local/<id>`` or ``remote/<id>``; fsync them; then have
qmail-clean remove ``intd/<id>`` and ``todo/<id>``.  A crash anywhere before
that last step just repeats the work on the next start: todo still exists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from indimail.queue.layout import Layout, fsync_dir
from indimail.send.rewrite import LOCAL, Rewriter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

CHAN_SUBS = ("local", "remote")


class QueuePaths:
    """``Layout.path`` as plain strings, for the per-message hot paths.

    The same names as ``str(layout.path(sub, inode))``, without building
    pathlib objects (a visible share of qmail-send's CPU per message).
    """

    __slots__ = ("_split_subs", "root", "split")

    def __init__(self, layout: Layout) -> None:
        self.root = str(layout.root).rstrip("/") or ""
        self.split = layout.split
        self._split_subs = {
            sub: layout.is_split(sub)
            for sub in ("mess", "intd", "todo", "info", "local", "remote", "bounce", "pid")
        }

    def __call__(self, sub: str, inode: int) -> str:
        if self._split_subs.get(sub):
            return f"{self.root}/{sub}/{inode % self.split}/{inode}"
        return f"{self.root}/{sub}/{inode}"


_PATHS: dict[Layout, QueuePaths] = {}


def queue_paths(layout: Layout) -> QueuePaths:
    """The (cached) :class:`QueuePaths` of ``layout``."""
    qp = _PATHS.get(layout)
    if qp is None:
        qp = _PATHS[layout] = QueuePaths(layout)
    return qp


def read_small(path: str) -> tuple[bytes, os.stat_result]:
    """Contents and fstat of a small queue file, with plain system calls
    (open, fstat, read, close: no buffered-file machinery)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        chunks = []
        want = max(st.st_size, 0) + 1
        while True:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want = 65536
        return b"".join(chunks), st
    finally:
        os.close(fd)


class TodoError(Exception):
    """Trouble with one todo entry; the message stays in todo for later."""


@dataclass
class Preprocessed:
    """What the scheduler needs to know about a freshly preprocessed message."""

    inode: int
    sender: bytes
    qp: bytes
    uid: bytes
    size: int
    local: list[bytes]
    remote: list[bytes]
    info: bytes = b""  # the info file's records
    birth: float = 0.0  # the info file's mtime
    chans: tuple[bytes, bytes] = (b"", b"")  # local/ and remote/ records (b"": none)


def parse_queue_envelope(data: bytes) -> tuple[dict[str, bytes], list[bytes]]:
    """Records of an intd/todo file: single ones by letter, and the T list."""
    single: dict[str, bytes] = {}
    rcpts: list[bytes] = []
    for rec in data.split(b"\0"):
        if not rec:
            continue
        letter = chr(rec[0])
        if letter == "T":
            rcpts.append(rec[1:])
        elif letter in "upFeh":
            single.setdefault(letter, rec[1:])
        else:
            raise TodoError(f"unknown record type {letter!r}")
    if "F" not in single:
        raise TodoError("no sender record")
    return single, rcpts


def _write_new(
    path: str | Path, data: bytes, excl: bool, unsynced: list[int] | None
) -> os.stat_result:
    """Write ``path``; fsync now, or leave the fd in ``unsynced`` for the
    caller to fsync with a whole batch (one journal commit for many).
    Returns the file's fstat after the write."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if unsynced is None:
            os.fsync(fd)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if unsynced is None:
        os.close(fd)
    else:
        unsynced.append(fd)
    return st


def sync_all(fds: list[int], dirs: Iterable[str] = ()) -> None:
    """fsync and close every fd of a batch; the first fsync commits the
    journal for all of them, the others find little left to do.  Then
    fsync ``dirs``, the directories that got the new names (qmail-send
    passes them with ``USE_SYNCDIR``, as the original's syncdir does)."""
    error: OSError | None = None
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    fds.clear()
    if error is None:
        for directory in dirs:
            try:
                fsync_dir(directory)
            except OSError as exc:
                error = exc
                break
    if error is not None:
        raise TodoError(f"trouble syncing preprocessed files: {error.strerror}")


def _unlink_quiet(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def preprocess(
    layout: Layout,
    inode: int,
    rewriter: Rewriter,
    unsynced: list[int] | None = None,
    write: bool = True,
) -> Preprocessed | None:
    """Write info/local/remote for ``todo/<inode>``; None if it vanished.

    With ``unsynced`` the new files are left open there, unsynced: the
    caller must :func:`sync_all` them before it asks qmail-clean to remove
    intd and todo.  With ``write`` false nothing is written (stale files of
    an earlier attempt are still removed): the caller keeps the records in
    memory while todo/ still holds the message, and writes them later with
    :func:`write_channel_files` (qmail-send's deferred commit).
    """
    qpath = queue_paths(layout)
    todo = qpath("todo", inode)
    try:
        data, _st = read_small(todo)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TodoError(f"trouble reading {todo}: {exc.strerror}") from None
    try:
        size = os.stat(qpath("mess", inode)).st_size
    except FileNotFoundError:
        raise TodoError(f"no message file for {todo}") from None
    single, rcpts = parse_queue_envelope(data)
    info = qpath("info", inode)
    local = qpath("local", inode)
    remote = qpath("remote", inode)
    for stale in (info, local, remote):
        _unlink_quiet(stale)
    info_data = b"F" + single["F"] + b"\0"
    if "e" in single:
        info_data += b"e" + single["e"] + b"\0"
    if "h" in single:
        info_data += b"h" + single["h"] + b"\0"
    chans: dict[str, list[bytes]] = {"L": [], "R": []}
    for rcpt in rcpts:
        chan, addr = rewriter.classify(rcpt)
        chans[chan].append(addr)
    records = tuple(b"".join(b"T" + a + b"\0" for a in chans[c]) for c in (LOCAL, "R"))
    birth = time.time()
    if write:
        try:
            birth = _write_new(info, info_data, True, unsynced).st_mtime
            for data, path in zip(records, (local, remote), strict=True):
                if data:
                    _write_new(path, data, True, unsynced)
        except OSError as exc:
            raise TodoError(f"trouble writing {exc.filename}: {exc.strerror}") from None
    return Preprocessed(
        inode=inode,
        sender=single["F"],
        qp=single.get("p", b"?"),
        uid=single.get("u", b"?"),
        size=size,
        local=chans["L"],
        remote=chans["R"],
        info=info_data,
        birth=birth,
        chans=(records[0], records[1]),
    )


def write_channel_files(
    qpath: QueuePaths, inode: int, info: bytes, birth: float, chans, retry, again: bool = False
) -> list[int]:
    """Write info/<inode> (mtime ``birth``) and the channel files that have
    records left (``chans``: local, remote contents or None; mtime the
    channel's next ``retry`` when set); return their open fds for the
    caller to sync.  Files of an interrupted earlier attempt are replaced;
    with ``again`` (there was one) a channel with nothing left loses its
    file of that attempt too."""
    fds: list[int] = []
    try:
        for sub, data, when in (("info", info, birth), *zip(CHAN_SUBS, chans, retry, strict=True)):
            if data is None:
                if again:
                    _unlink_quiet(qpath(sub, inode))
                continue
            _write_new(qpath(sub, inode), data, False, fds)
            if when:
                os.utime(fds[-1], (when, when))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise TodoError(f"trouble writing {exc.filename or 'queue file'}: {exc.strerror}") from None
    return fds
