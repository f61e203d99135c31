"""qmail-queue: put one message into one queue, durably.

Interface of the original: message on fd 0, envelope on fd 1
(``F<sender>\\0T<rcpt>\\0...\\0``), exit code from :mod:`codes`.  The write
order is the original's and is what makes a kill -9 at any moment safe:

1. create ``pid/<pid>.<time>.<seq>`` exclusively; its inode names the message;
2. link it to ``mess/<inode%split>/<inode>``, unlink the pid file;
3. write the Received line and the message to mess;
4. create ``intd/<inode>`` exclusively and write the envelope;
5. fsync mess and intd (always: durability is not optional here), and with
   ``USE_SYNCDIR`` also their directories;
6. link ``intd/<inode>`` to ``todo/<inode>``: the commit point;
7. fsync todo's directory entry, then poke ``lock/trigger``.

Anything before step 6 leaves no ``todo/`` entry; leftovers in ``pid/``,
``mess/`` and ``intd/`` are cleaned by queue-fix / qmail-clean.

Where the system has ``O_TMPFILE`` and ``/proc`` (Linux), steps 1-2 make
the file unnamed in one of the ``mess/`` split directories and link it
straight to its ``mess`` name, and step 4 links such a file to
``intd/<inode>``; elsewhere, or when that fails, the steps above run as
written.  A killed run then leaves no pid file, and the new inodes come
from the block groups of the many ``mess/`` parts, not from ``pid/``'s
and ``intd/``'s alone (:func:`_unnamed`).

:func:`enqueue` is the in-process form that our own injectors (sendmail,
qmail-smtpd) call without starting a program.
"""

from __future__ import annotations

import fcntl
import os
import time

from indimail.core import paths as _paths
from indimail.core.control import stable_key
from indimail.core.dates import date822fmt
from indimail.core.errors import Fatal
from indimail.core.record import Record
from indimail.queue import codes
from indimail.queue.layout import Layout, fsync_dir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path
    from typing import BinaryIO

# sendmail and qmail-smtpd queue in-process through enqueue(): this module
# keeps its start-up imports light (no signal, socket, dataclasses, typing at
# run time); main() and the rare paths import what they need.

ADDR = 1003  # longest address + NUL the original accepts
DEATH = 86400
CHUNK = 65536


class QueueError(Exception):
    """Enqueueing failed: exit ``code`` of qmail-queue plus a reason for logs."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Envelope(Record):
    """Sender and recipients as bytes, without the record letters."""

    _fields = ("sender", "recipients")
    __slots__ = _fields
    sender: bytes
    recipients: tuple[bytes, ...]

    def __init__(self, sender: bytes, recipients: tuple[bytes, ...]) -> None:
        self._set("sender", sender)
        self._set("recipients", recipients)

    def check(self) -> None:
        for addr in (self.sender, *self.recipients):
            if len(addr) >= ADDR:
                raise QueueError(codes.ENVELOPE_TOO_LONG, "envelope address too long")
            if b"\0" in addr:
                raise QueueError(codes.ENVELOPE_FMT_ERR, "envelope format error: NUL in address")


def parse_envelope(data: bytes) -> Envelope:
    """Parse the bytes qmail-queue reads on fd 1.

    ``data`` must hold the whole envelope including the final extra NUL;
    trailing bytes after it are ignored, as the original stops reading there.
    """
    if not data:
        raise QueueError(codes.READ_ERR, "trouble reading envelope: empty")
    if data[:1] != b"F":
        raise QueueError(codes.ENVELOPE_FMT_ERR, "envelope format error: sender record missing")
    pos = 1
    sender, pos = _field(data, pos)
    recipients = []
    while True:
        if pos >= len(data):
            raise QueueError(codes.READ_ERR, "trouble reading envelope: unterminated")
        letter = data[pos : pos + 1]
        if letter == b"\0":
            break
        if letter != b"T":
            raise QueueError(
                codes.ENVELOPE_FMT_ERR, f"envelope format error: record {letter!r} at byte {pos}"
            )
        addr, pos = _field(data, pos + 1)
        recipients.append(addr)
    return Envelope(sender, tuple(recipients))


def _field(data: bytes, start: int) -> tuple[bytes, int]:
    end = data.find(b"\0", start, start + ADDR)
    if end == -1:
        if len(data) - start >= ADDR:
            raise QueueError(codes.ENVELOPE_TOO_LONG, "envelope address too long")
        raise QueueError(codes.READ_ERR, "trouble reading envelope: unterminated address")
    return data[start:end], end + 1


def read_envelope(fd: int, limit: int = 64 * 1024 * 1024) -> Envelope:
    """Read fd until the envelope's closing NUL (bounded by ``limit`` bytes)."""
    buf = bytearray()
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError as exc:
            raise QueueError(codes.READ_ERR, f"trouble reading envelope: {exc.strerror}") from None
        if not chunk:
            return parse_envelope(bytes(buf))
        buf += chunk
        if _envelope_complete(buf):
            return parse_envelope(bytes(buf))
        if len(buf) > limit:
            raise QueueError(codes.ENVELOPE_FMT_ERR, "envelope format error: too large")


def _envelope_complete(buf: bytearray) -> bool:
    # Complete when a NUL stands where a record letter is expected.
    pos = 0
    n = len(buf)
    first = True
    while pos < n:
        if not first and buf[pos] == 0:
            return True
        first = False
        end = buf.find(b"\0", pos + 1)
        if end == -1:
            return False
        pos = end + 1
    return False


def envelope_bytes(sender: bytes, recipients: Iterable[bytes]) -> bytes:
    """The fd-1 form of an envelope, as an injector writes it."""
    out = bytearray(b"F" + sender + b"\0")
    for rcpt in recipients:
        out += b"T" + rcpt + b"\0"
    out += b"\0"
    return bytes(out)


def received_line(
    pid: int,
    uid: int,
    environ: dict[str, str] | os._Environ[str],
    remote_ip: str | None = None,
    when: float | None = None,
) -> bytes:
    """The Received line qmail-queue prepends (HIDE_HOST honoured)."""
    hide = bool(environ.get("HIDE_HOST"))
    parts = [f"Received: indimail-mta queue {pid}"]
    if not hide:
        # os.uname().nodename is what socket.gethostname() returns on POSIX
        # (both are uname(2)), without importing socket.
        host = environ.get("HOSTNAME") or os.uname().nodename or "unknown"
        parts.append(f" by host {host}\n ")
    role = _role_of_uid(uid)
    if role == "alias":
        parts.append("(invoked by alias")
    elif role == "qmails":
        parts.append("(invoked for bounce")
    else:
        parts.append("(invoked ")
        ip = remote_ip if remote_ip is not None else environ.get("TCPREMOTEIP")
        if ip:
            parts.append("from network")
            if not hide:
                parts.append(" " + ip)
            parts.append(", ")
        parts.append(f"by uid {uid}")
    parts.append(f"); {date822fmt(when)}\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


# _role_of_uid's answers, kept while /etc/passwd is unchanged (its stat key,
# under the racy rule of core.control): three getpwnam() calls, each reading
# /etc/passwd, for every message a long-lived qmail-smtpd queues otherwise.
_roles: dict[tuple[int, tuple[str, str, str]], str | None] = {}
_roles_key: tuple[int, int, int, int, int] | None = None
PASSWD = "/etc/passwd"


def _role_of_uid(uid: int) -> str | None:
    """``alias``/``qmails`` if uid is that role's and not also the queue owner's."""
    global _roles_key
    p = _paths.places()
    names = (p.user("qmailq"), p.user("alias"), p.user("qmails"))
    key = stable_key(PASSWD)
    if key != _roles_key:
        _roles.clear()
        _roles_key = key
    if key is not None:
        role = _roles.get((uid, names), _roles)
        if role is not _roles:
            return role  # type: ignore[return-value]
    role = _lookup_role(uid, names)
    if key is not None:
        _roles[(uid, names)] = role
    return role


def _lookup_role(uid: int, names: tuple[str, str, str]) -> str | None:
    import pwd

    try:
        owner = pwd.getpwnam(names[0]).pw_uid
    except KeyError:
        owner = None
    for role, name in (("alias", names[1]), ("qmails", names[2])):
        try:
            if pwd.getpwnam(name).pw_uid == uid and uid != owner:
                return role
        except KeyError:
            continue
    return None


def _open_excl(path: str, mode: int = 0o644) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _sync(fd: int, datasync: bool) -> None:
    if datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def fsync_mode(environ: dict[str, str] | os._Environ[str]) -> bool:
    """True for fdatasync (USE_FDATASYNC non-empty and not 0); we always sync."""
    v = environ.get("USE_FDATASYNC", "")
    return bool(v) and v != "0"


def enqueue(
    layout: Layout,
    message: BinaryIO | bytes | int,
    envelope: Envelope | Callable[[], Envelope],
    *,
    pid: int | None = None,
    uid: int | None = None,
    environ: dict[str, str] | os._Environ[str] | None = None,
    received: bytes | None = None,
    qqeh: str | None = None,
    wake: bool = True,
) -> int:
    """Queue one message; return its inode.  Raises :class:`QueueError`.

    ``message`` is bytes, a binary file, or a file descriptor to copy from.
    ``envelope`` may be a callable, read after the message is written (the
    command's order: fd 0 first, then fd 1).  ``wake=False`` leaves the
    poke of ``lock/trigger`` to the caller (:func:`poke_trigger`), who
    answers its client first: the message is durable either way, and the
    poke wakes another process, which is worth ~0.1 ms of the reply's
    latency.
    """
    if environ is None:
        environ = os.environ
    pid = os.getpid() if pid is None else pid
    uid = os.getuid() if uid is None else uid
    if isinstance(envelope, Envelope):
        envelope.check()
    if received is None:
        received = received_line(pid, uid, environ)
    if qqeh is None and not environ.get("FASTQUEUE"):
        qqeh = environ.get("QQEH") or None
    datasync = fsync_mode(environ)
    syncdir = bool(environ.get("USE_SYNCDIR"))
    root = layout.root_s
    if not os.path.isdir(root):
        raise QueueError(codes.CHDIR, f"trouble doing cd to queue directory {root}")

    # file names as str (no Path per name)
    prefix = root.rstrip("/") + "/"
    old_umask = os.umask(0o033)
    lockfd = _enqueue_lock(layout, prefix)
    messfd = intdfd = -1
    messfn: str | None = None
    intdfn: str | None = None
    try:
        # 1-2. a new file named by its inode, unnamed until linked there
        messfd = _unnamed(prefix, layout, 0)
        if messfd != -1:
            inode = os.fstat(messfd).st_ino
            target = prefix + layout.rel("mess", inode)
            try:
                messfd = _named(messfd, target)
            except FileExistsError:
                raise QueueError(
                    codes.LINK_MESS_PID, f"trouble linking {target} to pid file: file exists"
                ) from None
            if messfd != -1:
                messfn = target
        if messfd == -1:
            messfd, inode, messfn = _pid_file_to_mess(layout, prefix, pid)
        intdfn = prefix + layout.rel("intd", inode)
        todofn = prefix + layout.rel("todo", inode)
        # 3. the message.
        try:
            _write_all(messfd, received)
            _copy_message(message, messfd)
        except _ReadError as exc:
            raise QueueError(codes.READ_ERR, f"trouble reading message: {exc}") from None
        except OSError as exc:
            raise QueueError(codes.WRITE_ERR, f"trouble writing message: {exc.strerror}") from None
        # 4. the envelope.
        if not isinstance(envelope, Envelope):
            envelope = envelope()
            envelope.check()
        try:
            intdfd = _unnamed(prefix, layout, 1)
            if intdfd != -1:
                intdfd = _named(intdfd, intdfn)
            if intdfd == -1:
                intdfd = _open_excl(intdfn)
        except OSError as exc:
            intdfn = None
            raise QueueError(
                codes.INTD_FILE, f"trouble creating files in intd: {exc.strerror}"
            ) from None
        try:
            _write_all(intdfd, _internal_envelope(uid, pid, envelope, qqeh))
        except OSError as exc:
            raise QueueError(codes.WRITE_ERR, f"trouble writing envelope: {exc.strerror}") from None
        # 5. durable before the commit point.
        try:
            _sync(messfd, datasync)
            _sync(intdfd, datasync)
        except OSError as exc:
            raise QueueError(
                codes.FSYNC_ERR, f"trouble syncing message to disk: {exc.strerror}"
            ) from None
        if syncdir:
            # the original's USE_SYNCDIR: the directories holding the new
            # names too, for file systems that do not order metadata
            _sync_dir(os.path.dirname(messfn))
            _sync_dir(os.path.dirname(intdfn))
        # 6. commit.
        try:
            os.link(intdfn, todofn)
        except OSError as exc:
            raise QueueError(
                codes.LINK_TODO_INTD, f"trouble linking todo to intd: {exc.strerror}"
            ) from None
        messfn = intdfn = None  # committed: never clean up from here on
        # 7. make the todo entry durable, then wake the processor.
        _sync_dir(os.path.dirname(todofn))
        if wake:
            poke_trigger(trigger_path(root))
        return inode
    except BaseException:
        _cleanup(messfd, messfn, intdfd, intdfn)
        raise
    finally:
        for fd in (messfd, intdfd, lockfd):
            if fd != -1:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.umask(old_umask)


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


def _unnamed(prefix: str, layout: Layout, salt: int) -> int:
    """A new file without a name, open for writing, in one of the ``mess/``
    split directories (a different one each time): -1 where the system or
    the file system has no ``O_TMPFILE``.

    Why: a new inode comes from its directory's block group, and ext4
    without a journal skips, one lookup each, every inode of that group
    freed in the last 5-305 s.  All of a queue's pid files in ``pid/``
    (and its envelopes in ``intd/``) made every allocation scan the
    inodes its own deliveries had just freed (docs/performance.md,
    session 16); the ``mess/`` parts are spread over many groups."""
    if not _O_TMPFILE:
        return -1
    part = (time.perf_counter_ns() // 1000 + salt) % layout.split
    try:
        return os.open(f"{prefix}mess/{part}", os.O_WRONLY | _O_TMPFILE, 0o644)
    except OSError:
        return -1


def _link_unnamed(fd: int, path: str) -> None:
    """Name the unnamed file ``fd`` ``path`` (linkat through /proc, which
    needs no privilege; the absolute source makes the kernel ignore the
    directory fd, which is given only so that os.link calls linkat with
    AT_SYMLINK_FOLLOW instead of link)."""
    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd)


def _named(fd: int, path: str) -> int:
    """The unnamed file ``fd`` linked as ``path``: ``fd``, or -1 with ``fd``
    closed where this system refuses the link (no /proc, ...), so that the
    caller goes the old way.  A taken name (FileExistsError) is raised,
    with ``fd`` still open, for the caller to report as it would have."""
    try:
        _link_unnamed(fd, path)
    except FileExistsError:
        raise
    except OSError:
        os.close(fd)
        return -1
    return fd


def _pid_file_to_mess(layout: Layout, prefix: str, pid: int) -> tuple[int, int, str]:
    """Steps 1-2 with a pid file: (fd, inode, mess path)."""
    start = int(time.time())
    pidfn = None
    messfd = -1
    for seq in range(1, 10):
        candidate = f"{prefix}pid/{pid}.{start}.{seq}"
        try:
            messfd = _open_excl(candidate)
            pidfn = candidate
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise QueueError(
                codes.PID_FILE, f"trouble creating pid file {candidate}: {exc.strerror}"
            ) from None
    if pidfn is None:
        raise QueueError(codes.PID_FILE, "trouble creating pid file: all sequence numbers taken")
    try:
        inode = os.fstat(messfd).st_ino
        messfn = prefix + layout.rel("mess", inode)
        try:
            os.link(pidfn, messfn)
        except OSError as exc:
            _unlink(pidfn)
            raise QueueError(
                codes.LINK_MESS_PID, f"trouble linking {messfn} to pid file: {exc.strerror}"
            ) from None
        try:
            os.unlink(pidfn)
        except OSError as exc:
            _unlink(messfn)
            raise QueueError(
                codes.REMOVE_PID_ERR, f"trouble unlinking pid file: {exc.strerror}"
            ) from None
    except BaseException:
        os.close(messfd)
        raise
    return messfd, inode, messfn


def _enqueue_lock(layout: Layout, prefix: str) -> int:
    """Hold ``lock/enqueue`` shared while writing, so queue-fix (exclusive)
    knows that leftovers it finds belong to dead writers.  A queue made by
    another tool may lack the file: then there is nothing to hold."""
    try:
        fd = os.open(prefix + "lock/enqueue", os.O_RDONLY)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise QueueError(codes.PID_FILE, f"trouble opening lock/enqueue: {exc.strerror}") from None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


class _ReadError(Exception):
    pass


def _copy_message(message: BinaryIO | bytes | int, outfd: int) -> None:
    if isinstance(message, bytes | bytearray | memoryview):
        _write_all(outfd, message)
        return
    if isinstance(message, int):
        while True:
            try:
                chunk = os.read(message, CHUNK)
            except OSError as exc:
                raise _ReadError(exc.strerror) from None
            if not chunk:
                return
            _write_all(outfd, chunk)
    while True:
        try:
            chunk = message.read(CHUNK)
        except OSError as exc:
            raise _ReadError(exc.strerror) from None
        if not chunk:
            return
        _write_all(outfd, chunk)


def _internal_envelope(uid: int, pid: int, env: Envelope, qqeh: str | None) -> bytes:
    out = bytearray(b"u%d\0p%d\0F" % (uid, pid))
    out += env.sender + b"\0"
    for rcpt in env.recipients:
        out += b"T" + rcpt + b"\0"
    if qqeh:
        text = qqeh.encode("utf-8", "surrogateescape")
        if not text.endswith(b"\n"):
            text += b"\n"
        out += b"e" + text + b"\0"
    return bytes(out)


def _sync_dir(directory: str) -> None:
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise QueueError(
            codes.SYNCDIR_ERR, f"trouble syncing dir to disk: {exc.strerror}"
        ) from None


def trigger_path(root: str) -> str:
    """The ``lock/trigger`` of the queue at ``root``, as a string."""
    return root.rstrip("/") + "/lock/trigger"


def poke_trigger(trigger: str) -> None:
    """Write one byte to the queue's ``lock/trigger`` (:func:`trigger_path`)
    if a reader is there; never block."""
    try:
        fd = os.open(trigger, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _cleanup(messfd: int, messfn: str | None, intdfd: int, intdfn: str | None) -> None:
    # As the original: truncate, then unlink, what this run made.
    for fd, fn in ((intdfd, intdfn), (messfd, messfn)):
        if fn is None:
            continue
        if fd != -1:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        _unlink(fn)


def queue_dir_from_env(environ: dict[str, str] | os._Environ[str]) -> Path:
    """QUEUEDIR, else QUEUE_BASE/queue<n> with n random in START..START+COUNT-1."""
    from pathlib import Path  # qmail-queue the command only (start cost: core/paths)

    qd = environ.get("QUEUEDIR")
    if qd:
        return Path(qd)
    p = _paths.get()
    count = max(p.queue_count, 1)
    n = int.from_bytes(os.urandom(4), "little") % count + p.queue_start
    return p.queue_base / f"queue{n}"


def _remote_ip_of_stdin() -> str | None:
    import stat

    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return None  # a pipe or a file: no peer, and no need for socket
    except OSError:
        return None
    import socket

    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError:
        return None
    try:
        peer = sock.getpeername()
        return peer[0] if isinstance(peer, tuple) else None
    except OSError:
        return None
    finally:
        sock.close()


def _alarm(_signum: int, _frame: object) -> None:
    os._exit(codes.TIMEOUT)


def main(argv: list[str]) -> int:
    """qmail-queue: message on fd 0, envelope on fd 1."""
    import signal

    environ = os.environ
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        os.write(2, b"usage: qmail-queue (message on fd 0, envelope on fd 1)\n")
        return 0
    try:
        death = int(environ.get("DEATH") or DEATH)
    except ValueError:
        death = DEATH
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.alarm(max(death, 1))
    try:
        p = _paths.get()
        queuedir = queue_dir_from_env(environ)
    except Fatal as exc:
        # Configuration trouble is qmail-queue's "unable to read configuration".
        return _fail(QueueError(codes.CONFIG_ERR, exc.message))
    layout = Layout(root=queuedir, split=p.conf_split, bigtodo=p.bigtodo)
    uid = os.getuid()
    # Before switching to the queue's owner: what this imports (socket) may
    # not be readable by that account.
    remote_ip = environ.get("TCPREMOTEIP")
    if not remote_ip and not environ.get("FASTQUEUE") and not environ.get("HIDE_HOST"):
        remote_ip = _remote_ip_of_stdin()
    try:
        st = os.stat(queuedir)
        euid = os.geteuid()
        if euid == 0 and st.st_uid != 0:
            # the original is setuid qmailq: queue files belong to the queue's owner
            os.setgroups([])
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
        elif euid != 0 and st.st_uid != euid:
            return _via_door(p, queuedir, environ)
    except FileNotFoundError:
        pass  # enqueue names the missing queue
    except OSError as exc:
        return _fail(
            QueueError(codes.GET_UID_GID, f"unable to switch to the queue owner: {exc.strerror}")
        )
    pid = os.getpid()
    try:
        received = received_line(pid, uid, environ, remote_ip)
        # As the original: the message first, then the envelope from fd 1.
        enqueue(
            layout,
            0,
            lambda: read_envelope(1),
            pid=pid,
            uid=uid,
            environ=environ,
            received=received,
        )
    except QueueError as exc:
        return _fail(exc)
    return 0


def _via_door(p: _paths.Paths, queuedir: Path, environ: os._Environ[str]) -> int:
    """Run by a user who cannot write the queue: hand fd 0 and fd 1 to
    qmail-queued, which queues as the owner (our stand-in for setuid)."""
    from indimail.queue import door

    try:
        spool_fd, _length, spool = door.sized_fd(0)  # fd 0 first, as the original
        try:
            envelope = read_envelope(1)
            envelope.check()
            door.submit_via_socket(
                door.socket_path(p, environ),
                queuedir,
                spool_fd,
                envelope.sender,
                envelope.recipients,
                environ,
            )
        finally:
            if spool is not None:
                spool.close()
    except QueueError as exc:
        return _fail(exc)
    return 0


def _fail(exc: QueueError) -> int:
    try:
        os.write(2, f"qmail-queue: {exc.reason}\n".encode(errors="replace"))
    except OSError:
        pass
    return exc.code
