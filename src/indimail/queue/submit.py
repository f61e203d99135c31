"""How our injectors hand a message to the queue (qmail's ``qmail_open``).

``QMAILQUEUE`` names the queue program as in the original.  When it is
unset or names one of ours (``qmail-multi``, ``qmail-queue``), the message
is queued in-process: no interpreter start on the hot path.  Any other
program is run exactly as the original runs it: message on its fd 0,
envelope on its fd 1, and its exit code mapped by :mod:`codes`.
"""

from __future__ import annotations

import os

from indimail.core import paths as _paths
from indimail.core.record import Record
from indimail.queue import codes
from indimail.queue.layout import Layout
from indimail.queue.qmail_queue import (
    Envelope,
    QueueError,
    enqueue,
    envelope_bytes,
    poke_trigger,
    trigger_path,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import BinaryIO

# sendmail queues through here once per message: subprocess and tempfile
# (~15 ms to import) are imported only when QMAILQUEUE names another program.

OUR_QUEUE_PROGRAMS = ("qmail-multi", "qmail-queue")


class SubmitError(Exception):
    """The queue refused or failed: ``code`` and the ``D``/``Z`` text."""

    def __init__(self, code: int, text: str, reason: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.reason = reason

    @property
    def permanent(self) -> bool:
        return self.text.startswith("D")


class Queued(Record):
    """Where a message went: its number, the queue, and the qp (pid) shown.

    ``trigger`` is the queue's ``lock/trigger`` when :func:`submit` was
    asked not to wake the queue (``wake=False``) and left that to
    :meth:`wake`; None when the queue was woken already."""

    _fields = ("inode", "queuedir", "qp", "trigger")
    __slots__ = _fields
    inode: int
    queuedir: str | Path | None
    qp: int
    trigger: str | None

    def __init__(
        self, inode: int, queuedir: str | Path | None, qp: int, trigger: str | None = None
    ) -> None:
        self._set("inode", inode)
        self._set("queuedir", queuedir)
        self._set("qp", qp)
        self._set("trigger", trigger)

    def wake(self) -> None:
        """Poke the queue's processor if :func:`submit` left that to us."""
        if self.trigger is not None:
            poke_trigger(self.trigger)


def is_ours(program: str) -> bool:
    """True if QMAILQUEUE is unset or names one of our queue programs alone
    (with arguments it is run as a program, so the arguments take effect)."""
    words = program.split()
    if not words:
        return True
    return len(words) == 1 and os.path.basename(words[0]) in OUR_QUEUE_PROGRAMS


def submit(
    message: bytes | BinaryIO,
    sender: bytes,
    recipients: Sequence[bytes],
    *,
    environ: Mapping[str, str] | None = None,
    wake: bool = True,
) -> Queued:
    """Queue ``message`` for ``recipients``; raise :class:`SubmitError` on failure.

    With ``wake=False`` a message queued in this process does not poke the
    queue yet: the caller answers its client first, then calls
    :meth:`Queued.wake` (qmail-smtpd's 250 need not wait for the wake-up
    of qmail-send).  Every other path wakes the queue itself."""
    if environ is None:
        environ = os.environ
    program = environ.get("QMAILQUEUE", "")
    if is_ours(program):
        return _submit_in_process(message, sender, recipients, environ, wake)
    return _submit_external(program, message, sender, recipients, environ)


def _submit_in_process(
    message: bytes | BinaryIO,
    sender: bytes,
    recipients: Sequence[bytes],
    environ: Mapping[str, str],
    wake: bool = True,
) -> Queued:
    from indimail.queue.qmail_multi import check_min_free, choose_queue

    p = _paths.places()  # strings: no pathlib on the way to the queue
    try:
        queuedir = choose_queue(environ, p)
        check_min_free(queuedir, environ)
        layout = _layout(queuedir, p.conf_split, p.bigtodo)
        envelope = Envelope(sender, tuple(recipients))
        owner = _queue_owner(queuedir)
        euid = os.geteuid()
        if euid == 0 and owner not in (None, 0):
            return _submit_as_owner(layout, message, envelope, environ, owner)
        if euid != 0 and owner is not None and owner != euid:
            return _submit_via_door(p, queuedir, message, envelope, environ)
        inode = enqueue(layout, message, envelope, environ=environ, wake=wake)  # type: ignore[arg-type]
    except QueueError as exc:
        raise SubmitError(exc.code, codes.text_for(exc.code), exc.reason) from None
    trigger = None if wake else trigger_path(layout.root_s)
    return Queued(inode=inode, queuedir=queuedir, qp=os.getpid(), trigger=trigger)


# One Layout per queue for a process that queues message after message (a
# qmail-smtpd pool worker): a Layout is immutable, and making one normalises
# its path each time.
_layouts: dict[tuple[str, int, int], Layout] = {}


def _layout(queuedir: str, split: int, bigtodo: int) -> Layout:
    key = (queuedir, split, bigtodo)
    found = _layouts.get(key)
    if found is None:
        if len(_layouts) >= 64:  # a bound for paths that keep changing
            _layouts.clear()
        found = _layouts[key] = Layout(root=queuedir, split=split, bigtodo=bigtodo)
    return found


def _submit_via_door(
    p: _paths.Places,
    queuedir: Path,
    message: bytes | BinaryIO,
    envelope: Envelope,
    environ: Mapping[str, str],
) -> Queued:
    """Not the queue's owner (qmaild, a user): qmail-queued queues for us,
    as the original's setuid qmail-queue would."""
    from indimail.queue import door

    envelope.check()
    inode, where = door.submit_via_socket(
        door.socket_path(p, environ),
        queuedir,
        message,
        envelope.sender,
        envelope.recipients,
        environ,
    )
    return Queued(inode=inode, queuedir=where, qp=os.getpid())


def _queue_owner(queuedir: str | Path) -> int | None:
    try:
        return os.stat(queuedir).st_uid
    except OSError:
        return None  # enqueue reports the missing queue itself


def _submit_as_owner(
    layout: Layout,
    message: bytes | BinaryIO,
    envelope: Envelope,
    environ: Mapping[str, str],
    owner: int,
) -> Queued:
    """Root queues as the queue's owner, in a forked child: the files must
    belong to qmailq (the original's qmail-queue is setuid qmailq)."""
    gid = os.stat(layout.root_s).st_gid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        reply = b"81 internal error"
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(owner)
            inode = enqueue(
                layout,
                message,
                envelope,
                environ=environ,  # type: ignore[arg-type]
                uid=0,
            )
            reply = b"0 %d" % inode
        except QueueError as exc:
            reply = b"%d %s" % (exc.code, exc.reason.encode("utf-8", "replace"))
        except OSError as exc:
            reply = b"78 unable to switch to the queue owner: %s" % ((exc.strerror or "").encode())
        except BaseException as exc:
            reply = b"81 internal error: %s" % type(exc).__name__.encode()
        finally:
            try:
                os.write(w, reply)
            finally:
                os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    code_s, _, rest = b"".join(chunks).partition(b" ")
    code = int(code_s) if code_s.isdigit() else codes.CRASHED
    if code != 0:
        raise QueueError(code, rest.decode("utf-8", "replace") or "queue writer died")
    return Queued(inode=int(rest), queuedir=layout.root_s, qp=pid)


def _submit_external(
    program: str,
    message: bytes | BinaryIO,
    sender: bytes,
    recipients: Sequence[bytes],
    environ: Mapping[str, str],
) -> Queued:
    import subprocess
    import tempfile

    argv = program.split()
    env = dict(environ)
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    # stderr to a file: a chatty program must never block on a full pipe
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed on every path below
    try:
        proc = subprocess.Popen(
            argv, stdin=msg_r, stdout=env_r, env=env, close_fds=True, stderr=errfile
        )
    except OSError as exc:
        for fd in (msg_r, msg_w, env_r, env_w):
            os.close(fd)
        errfile.close()
        raise SubmitError(
            codes.EXEC_QMAILQUEUE,
            codes.text_for(codes.EXEC_QMAILQUEUE),
            f"unable to run {argv[0]}: {exc.strerror}",
        ) from None
    os.close(msg_r)
    os.close(env_r)
    read_error: str | None = None
    try:
        with os.fdopen(msg_w, "wb") as out:
            if isinstance(message, bytes | bytearray):
                out.write(message)
            else:
                while True:
                    try:
                        chunk = message.read(65536)
                    except OSError as exc:
                        read_error = exc.strerror or str(exc)
                        break
                    if not chunk:
                        break
                    out.write(chunk)
    except BrokenPipeError:
        pass
    if read_error is not None:
        os.close(env_w)  # no envelope: the program sees EOF and gives up
        proc.wait()
        errfile.close()
        raise SubmitError(
            codes.READ_ERR, codes.text_for(codes.READ_ERR), f"trouble reading message: {read_error}"
        )
    try:
        with os.fdopen(env_w, "wb") as out:
            out.write(envelope_bytes(sender, recipients))
    except BrokenPipeError:
        pass
    code = proc.wait()
    errfile.seek(0)
    err = errfile.read(65536)
    errfile.close()
    if code == 0:
        return Queued(inode=0, queuedir=None, qp=proc.pid)
    if code < 0:
        raise SubmitError(codes.CRASHED, codes.text_for(codes.CRASHED), f"killed by signal {-code}")
    text = err.decode("utf-8", "replace").strip()
    custom = text if code == codes.CUSTOM_ERR else None
    raise SubmitError(code, codes.text_for(code, custom), text)
