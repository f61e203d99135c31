"""qmail-start and qscheduler: bring up the delivery processes of the queues.

``qmail-start [-s|-cd] [defaultdelivery [logger args...]]`` runs one queue
(QUEUEDIR): it makes the pipes, forks qmail-lspawn, qmail-rspawn and
qmail-clean from this warm process (no exec: their code is already
loaded), optionally a logger that reads qmail-send's log, and then becomes
qmail-send itself.  When started as root each child takes its own account
(lspawn stays root to switch to each recipient, rspawn qmailr, clean qmailq,
send qmails); in a rootless instance nobody changes user.

``qscheduler -s [defaultdelivery [logger...]]`` (also ``qmail-daemon``) runs
one qmail-start per queue QUEUE_START..QUEUE_START+QUEUE_COUNT-1 with
QUEUEDIR and QIDENT set, restarts one that dies after ERROR_INTERVAL (5 s),
and passes TERM, HUP and ALRM on to all of them.
"""

from __future__ import annotations

import getopt
import grp
import os
import pwd
import select
import signal
import sys
import time
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError, exit_child
from indimail.core.proctitle import set_proc_name
from indimail.queue.layout import Layout

ERROR_INTERVAL = 5


def _become(p: _paths.Paths, role: str) -> None:
    """Switch to ``role``'s account when running as root."""
    if os.getuid() != 0:
        return
    name = p.user(role)
    try:
        pw = pwd.getpwnam(name)
        gid = grp.getgrnam(p.group("qmail")).gr_gid
    except KeyError:
        raise Fatal(111, f"unable to find account {name} or group {p.group('qmail')}") from None
    os.setgroups([])
    os.setgid(gid)
    os.setuid(pw.pw_uid)


def _fork(fn, keep: tuple[int, ...], fd0: int, fd1: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 111
    try:
        os.dup2(fd0, 0)
        os.dup2(fd1, 1)
        for fd in keep:
            if fd > 2:
                try:
                    os.close(fd)
                except OSError:
                    pass
        code = fn()
    except Fatal as exc:
        sys.stderr.write(f"{exc.message}\n")
        code = exc.code
    except BaseException as exc:  # a child never returns into the parent's code
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
    finally:
        exit_child(code)


def _warm() -> None:
    """Import what every queue's processes run, then freeze the collector's
    view of it, before forking: the pages stay shared between qscheduler,
    its qmail-sends and their spawners instead of one copy per process (the
    collector would otherwise write into every object it scans)."""
    import gc

    from indimail.deliver import qmail_local, qmail_remote, users  # noqa: F401
    from indimail.send import qmail_clean, qmail_send, spawn  # noqa: F401

    gc.collect()
    gc.freeze()


def start_queue(
    p: _paths.Paths, queuedir: Path, defaultdelivery: str, logger: list[str], qident: str | None
) -> int:
    """qmail-start for one queue; returns qmail-send's exit code."""
    from indimail.send import qmail_clean, qmail_send, spawn

    # Signals that arrive while starting up are kept for qmail-send's loop
    # (a default ALRM or HUP would kill the queue).
    pending: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: pending.append(s))
    os.environ["QUEUEDIR"] = str(queuedir)
    if qident:
        os.environ["QIDENT"] = qident
    layout = Layout(queuedir, split=p.conf_split, bigtodo=p.bigtodo)
    if not (queuedir / "lock" / "sendmutex").exists():
        raise Fatal(111, f"{queuedir} is not a queue (no lock/sendmutex): run queue-fix")
    mutex = qmail_send.lock_sendmutex(layout)
    owner = spawn._queue_owner(p)
    pipes = {name: os.pipe() for name in ("l_in", "l_out", "r_in", "r_out", "c_in", "c_out")}
    all_fds = (*[fd for pair in pipes.values() for fd in pair], mutex)

    def lspawn() -> int:
        set_proc_name("qmail-lspawn")
        sp = spawn.Spawner(
            layout,
            spawn.lspawn_child(p, defaultdelivery),
            spawn.lspawn_report,
            owner,
            worker_name="qmail-local",
        )
        return sp.serve()

    def rspawn() -> int:
        set_proc_name("qmail-rspawn")
        _become(p, "qmailr")
        child = spawn.rspawn_child(layout)
        sp = spawn.Spawner(layout, child, spawn.rspawn_report, owner, worker_name="qmail-remote")
        return sp.serve()

    def clean() -> int:
        set_proc_name("qmail-clean")
        _become(p, "qmailq")
        return qmail_clean.serve(layout)

    _fork(lspawn, all_fds, pipes["l_in"][0], pipes["l_out"][1])
    _fork(rspawn, all_fds, pipes["r_in"][0], pipes["r_out"][1])
    _fork(clean, all_fds, pipes["c_in"][0], pipes["c_out"][1])
    for name in ("l_in", "r_in", "c_in"):
        os.close(pipes[name][0])
    for name in ("l_out", "r_out", "c_out"):
        os.close(pipes[name][1])
    log_fd = 1
    if logger:
        log_r, log_w = os.pipe()
        if os.fork() == 0:
            try:
                os.dup2(log_r, 0)
                os.close(log_r)
                os.close(log_w)
                _become(p, "qmaill")
                os.execvp(logger[0], logger)
            except OSError as exc:
                sys.stderr.write(f"qmail-start: unable to run logger {logger[0]}: {exc.strerror}\n")
            os._exit(111)
        os.close(log_r)
        log_fd = log_w
    _become(p, "qmails")
    set_proc_name("qmail-send")
    sender = qmail_send.Sender(
        layout,
        [(pipes["l_in"][1], pipes["l_out"][0]), (pipes["r_in"][1], pipes["r_out"][0])],
        (pipes["c_in"][1], pipes["c_out"][0]),
        log_fd,
        p.controldir,
        qident,
    )
    sender.signals = pending
    sender.start()
    return sender.run(qmail_send.open_trigger(layout))


def _args(argv: list[str]) -> tuple[str, list[str]]:
    try:
        _opts, args = getopt.getopt(argv[1:], "scdn")
    except getopt.GetoptError as exc:
        raise UsageError(
            f"{exc.msg}\nusage: {argv[0]} [-s|-cd] [defaultdelivery [logger args...]]"
        ) from None
    default = args[0] if args else ""
    if not default:
        from indimail.core import control

        default = control.read_line("defaultdelivery", "./Maildir/") or "./Maildir/"
    return default, args[1:]


def main(argv: list[str]) -> int:
    """qmail-start: one queue (QUEUEDIR, else the first queue)."""
    p = _paths.get()
    default, logger = _args(argv)
    queuedir = Path(os.environ.get("QUEUEDIR") or p.queue_dirs()[0])
    _warm()  # qscheduler did this once for all its queues
    return start_queue(p, queuedir, default, logger, os.environ.get("QIDENT"))


def scheduler_main(argv: list[str]) -> int:
    """qscheduler / qmail-daemon: one qmail-start per queue, kept running."""
    p = _paths.get()
    default, logger = _args(argv)
    queues = {
        str(n): p.queue_base / f"queue{n}"
        for n in range(p.queue_start, p.queue_start + p.queue_count)
    }
    for q in queues.values():
        if not (q / "lock" / "sendmutex").exists():
            raise Fatal(111, f"{q} is not a queue (no lock/sendmutex): run queue-fix")
    _warm()
    children: dict[int, str] = {}
    pending: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: pending.append(s))

    def spawn_queue(ident: str) -> None:
        pid = os.fork()
        if pid == 0:
            code = 111
            try:
                # TERM/HUP/ALRM keep a recording handler until start_queue
                # installs its own: a default one would kill the queue.
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                code = start_queue(p, queues[ident], default, logger, ident)
            except Fatal as exc:
                sys.stderr.write(f"qscheduler: queue{ident}: {exc.message}\n")
                code = exc.code
            except BaseException as exc:
                sys.stderr.write(
                    f"qscheduler: queue{ident}: internal error: {type(exc).__name__}: {exc}\n"
                )
            finally:
                exit_child(code)
        children[pid] = ident

    for ident in queues:
        spawn_queue(ident)
    stopping = False
    restart_at: dict[str, float] = {}
    while children or (restart_at and not stopping):
        while pending:
            sig = pending.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                stopping = True
                restart_at.clear()
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)
                except ProcessLookupError:
                    pass
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid:
            ident = children.pop(pid, None)
            if ident is not None and not stopping:
                sys.stderr.write(
                    f"qscheduler: queue{ident} exited with status {status}; "
                    f"restarting in {ERROR_INTERVAL} s\n"
                )
                restart_at[ident] = time.monotonic() + ERROR_INTERVAL
            continue
        now = time.monotonic()
        for ident, when in list(restart_at.items()):
            if when <= now and not stopping:
                del restart_at[ident]
                spawn_queue(ident)
        if not pending:
            select.select([wake_r], [], [], 1.0)
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
    return 0
