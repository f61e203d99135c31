"""Writing one message into a Maildir or an mbox file.

Both writers read the message from a seekable file descriptor (the queue's
``mess`` file) starting at offset 0, put the given header lines in front,
and either finish completely or leave nothing behind: a Maildir message is
only linked into ``new/`` after ``fsync``; an mbox is truncated back to its
old length when a write fails.

The errors carry qmail's numbers so :mod:`qmail_local` can give the
original's texts; other delivery agents (vdelivermail) may reuse them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable

CHUNK = 1 << 16

# maildir_deliver()'s result codes in the original.
MD_TEMP = 1  # temporary error (write, link, fsync, create)
MD_CHDIR = 2  # the Maildir cannot be entered (permanent kind of errno)
MD_READ = 4  # the message could not be read
MD_QUOTA = 5  # EDQUOT

# errno values qmail's error_temp() counts as temporary.
TEMP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EINTR",
        "ENOMEM",
        "ETXTBSY",
        "EIO",
        "ETIMEDOUT",
        "EWOULDBLOCK",
        "EAGAIN",
        "ENFILE",
        "EMFILE",
        "EDEADLK",
        "ESTALE",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ECONNREFUSED",
        "ENOLCK",
        "ENOSPC",
    )
    if hasattr(errno, name)
)


def is_temp(err: int | None) -> bool:
    """qmail's ``error_temp()``."""
    return err in TEMP_ERRNOS


class MaildirError(Exception):
    """Maildir delivery failed; ``code`` is one of the ``MD_*`` values."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MboxError(Exception):
    """mbox delivery failed; ``kind`` is open, lock, read, write or quota.

    For open, write and quota ``reason`` is the system's error text only.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def maildir_hostname(name: str | None = None) -> str:
    """The host part of Maildir file names: ``/`` as ``\\057``, ``:`` as ``\\072``."""
    if name is None:
        name = socket.gethostname()
    return name.replace("/", "\\057").replace(":", "\\072")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _sync(fd: int, datasync: bool) -> None:
    if datasync and hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def write_maildir(
    maildir: str | os.PathLike[str],
    head: bytes,
    msgfd: int,
    *,
    datasync: bool = False,
    hostname: str | None = None,
) -> str:
    """Deliver ``head`` + the message on ``msgfd`` to ``maildir``.

    Returns the file name made in ``new/``.  The data is always synced
    (``datasync`` picks fdatasync), then linked into ``new/`` and the
    directory synced, before this returns.  Raises :class:`MaildirError`.
    """
    try:
        dfd = os.open(maildir, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        code = MD_TEMP if is_temp(exc.errno) else MD_CHDIR
        raise MaildirError(code, f"{maildir}: {exc.strerror}") from None
    try:
        return _maildir_in(dfd, head, msgfd, datasync, maildir_hostname(hostname))
    finally:
        os.close(dfd)


def _maildir_in(dfd: int, head: bytes, msgfd: int, datasync: bool, host: str) -> str:
    pid = os.getpid()
    fd = -1
    tmpname = ""
    for attempt in range(3):
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        tmpname = f"tmp/{sec}.M{usec}P{pid}.{host}"
        try:
            fd = os.open(
                tmpname,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                0o600,
                dir_fd=dfd,
            )
            break
        except FileExistsError:
            if attempt == 2:
                raise MaildirError(MD_TEMP, f"{tmpname}: file exists") from None
            time.sleep(0.0001)
        except OSError as exc:
            code = MD_QUOTA if exc.errno == errno.EDQUOT else MD_TEMP
            raise MaildirError(code, f"{tmpname}: {exc.strerror}") from None
    newname = ""
    try:
        try:
            _write_all(fd, head)
            try:
                os.lseek(msgfd, 0, os.SEEK_SET)
            except OSError as exc:
                raise MaildirError(MD_READ, f"unable to rewind message: {exc.strerror}") from None
            while True:
                try:
                    chunk = os.read(msgfd, CHUNK)
                except OSError as exc:
                    raise MaildirError(MD_READ, f"unable to read message: {exc.strerror}") from None
                if not chunk:
                    break
                _write_all(fd, chunk)
            _sync(fd, datasync)
            st = os.fstat(fd)
            os.close(fd)
            fd = -1
            newname = f"new/{sec}.I{st.st_ino:x}V{st.st_dev:x}M{usec}P{pid}.{host},S={st.st_size}"
            os.link(tmpname, newname, src_dir_fd=dfd, dst_dir_fd=dfd)
            newfd = os.open("new", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
            try:
                _sync(newfd, False)
            finally:
                os.close(newfd)
        except MaildirError:
            raise
        except OSError as exc:
            # After the link only the directory sync can fail: the message
            # is in new/ but maybe not durably, so the retry may duplicate it.
            code = MD_QUOTA if exc.errno == errno.EDQUOT else MD_TEMP
            raise MaildirError(code, f"{exc.strerror}") from None
    finally:
        if fd != -1:
            os.close(fd)
        try:
            os.unlink(tmpname, dir_fd=dfd)
        except OSError:
            pass
    return newname[4:]


class _ReadFailed(Exception):
    pass


def from_quoted(msgfd: int, write: Callable[[bytes], None]) -> None:
    """Copy the message, quoting ``>*From `` lines with one more ``>``.

    A line without a final newline gets one; a blank line is added at the
    end (mbox format).  Works on a stream in bounded memory whatever the
    line lengths.  ``write`` is called with bytes.
    """
    out = bytearray()
    at_start = True
    gt = 0  # '>' seen at the start of the current line
    k = 0  # bytes of "From " matched after them
    last_nl = True
    pattern = b"From "
    while True:
        try:
            chunk = os.read(msgfd, CHUNK)
        except OSError as exc:
            raise _ReadFailed(exc.strerror or str(exc)) from None
        if not chunk:
            break
        i = 0
        n = len(chunk)
        while i < n:
            if at_start:
                c = chunk[i]
                if k == 0 and c == 0x3E:
                    gt += 1
                    i += 1
                    continue
                if c == pattern[k]:
                    k += 1
                    i += 1
                    if k == 5:
                        out += b">" * (gt + 1) + pattern
                        at_start = False
                        last_nl = False
                    continue
                if gt or k:
                    out += b">" * gt + pattern[:k]
                    last_nl = False
                at_start = False
                continue
            nl = chunk.find(b"\n", i)
            if nl < 0:
                out += chunk[i:]
                last_nl = False
                i = n
            else:
                out += chunk[i : nl + 1]
                last_nl = True
                i = nl + 1
                at_start = True
                gt = k = 0
        if len(out) >= CHUNK:
            write(bytes(out))
            out.clear()
    if at_start and (gt or k):
        out += b">" * gt + pattern[:k]
        last_nl = False
    if not last_nl:
        out += b"\n"
    out += b"\n"
    write(bytes(out))


def write_mbox(
    path: str | os.PathLike[str],
    head: bytes,
    msgfd: int,
    *,
    datasync: bool = False,
    lock_timeout: float = 30.0,
) -> None:
    """Append ``head`` + the quoted message + a blank line to mbox ``path``.

    The file is locked with flock (waiting at most ``lock_timeout``
    seconds); on a failed write it is truncated back to its old length
    when the lock was held.  Raises :class:`MboxError`.
    """
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
            0o600,
        )
    except OSError as exc:
        raise MboxError("open", exc.strerror or str(exc)) from None
    try:
        locked = _lock(fd, lock_timeout)
        pos = os.lseek(fd, 0, os.SEEK_END)
        try:
            os.lseek(msgfd, 0, os.SEEK_SET)
        except OSError as exc:
            raise MboxError("read", f"Unable to rewind message: {exc.strerror}") from None
        try:
            _write_all(fd, head)
            try:
                from_quoted(msgfd, lambda data: _write_all(fd, data))
            except _ReadFailed as exc:
                raise MboxError("read", f"Unable to read message: {exc}") from None
            _sync(fd, datasync)
        except (OSError, MboxError) as exc:
            if locked:
                try:
                    os.ftruncate(fd, pos)
                except OSError:
                    pass
            if isinstance(exc, MboxError):
                raise
            raise MboxError(
                "quota" if exc.errno == errno.EDQUOT else "write",
                exc.strerror or str(exc),
            ) from None
    finally:
        os.close(fd)


def _lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise MboxError("lock", "File has been locked for 30 seconds straight.") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        except OSError:
            # No locking on this file system: deliver unlocked, as qmail.
            return False
