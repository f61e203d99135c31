"""Multicall entry point: one binary, one name per command.

The command is chosen by ``basename(argv[0])`` (packaging installs one
symlink per command) or by ``indimail COMMAND ARGS...``.  The table maps
each name to the module implementing it; modules are imported only when
their command runs, so a light command starts fast.

Every command module provides ``main(argv: list[str]) -> int`` (or the
function named after a colon in the table).
"""

from __future__ import annotations

import io  # loaded with the interpreter (sys.stdout is one): free
import os
import sys

from indimail.core.errors import EXIT_TEMP, Fatal

# command name -> (module, exit code for an unexpected internal error)
COMMANDS: dict[str, tuple[str, int]] = {
    # cdb
    "cdbmake": ("indimail.core.cdb_tools", EXIT_TEMP),
    "cdbget": ("indimail.core.cdb_tools", EXIT_TEMP),
    "cdbdump": ("indimail.core.cdb_tools", EXIT_TEMP),
    "cdbtest": ("indimail.core.cdb_tools", EXIT_TEMP),
    "cdbstats": ("indimail.core.cdb_tools", EXIT_TEMP),
    # queue
    "qmail-queue": ("indimail.queue.qmail_queue", 81),
    "qmail-multi": ("indimail.queue.qmail_multi", 81),
    "qmail-queued": ("indimail.queue.qmail_queued", EXIT_TEMP),
    "queue-fix": ("indimail.queue.queue_fix", EXIT_TEMP),
    "qmail-qread": ("indimail.queue.qmail_qread", EXIT_TEMP),
    "qmail-qstat": ("indimail.queue.qmail_qstat", EXIT_TEMP),
    "mailq": ("indimail.queue.qmail_qread", EXIT_TEMP),
    # injection
    "qmail-inject": ("indimail.smtpd.qmail_inject", EXIT_TEMP),
    "sendmail": ("indimail.smtpd.sendmail", EXIT_TEMP),
    # delivery engine
    "qmail-send": ("indimail.send.qmail_send", EXIT_TEMP),
    "qmail-start": ("indimail.send.qmail_start", EXIT_TEMP),
    "qscheduler": ("indimail.send.qmail_start:scheduler_main", EXIT_TEMP),
    "qmail-daemon": ("indimail.send.qmail_start:scheduler_main", EXIT_TEMP),
    "qmail-lspawn": ("indimail.send.spawn:lspawn_main", EXIT_TEMP),
    "qmail-rspawn": ("indimail.send.spawn:rspawn_main", EXIT_TEMP),
    "qmail-clean": ("indimail.send.qmail_clean", EXIT_TEMP),
    # administration
    "qmail-showctl": ("indimail.admin.qmail_showctl", EXIT_TEMP),
    "indimail-instance": ("indimail.admin.instance", EXIT_TEMP),
    # services
    "svctool": ("indimail.admin.svctool", EXIT_TEMP),
    "create_services": ("indimail.admin.create_services", EXIT_TEMP),
    "qmailctl": ("indimail.admin.qmailctl", EXIT_TEMP),
    # local delivery
    "qmail-local": ("indimail.deliver.qmail_local", EXIT_TEMP),
    "qmail-newu": ("indimail.deliver.qmail_newu", EXIT_TEMP),
    "qmail-getpw": ("indimail.deliver.qmail_getpw", EXIT_TEMP),
    "condredirect": ("indimail.deliver.condredirect", EXIT_TEMP),
    "bouncesaying": ("indimail.deliver.bouncesaying", EXIT_TEMP),
    "preline": ("indimail.deliver.preline", EXIT_TEMP),
    # remote delivery
    "qmail-remote": ("indimail.deliver.qmail_remote", EXIT_TEMP),
    "qmail-tcpto": ("indimail.deliver.tcpto", EXIT_TEMP),
    "qmail-tcpok": ("indimail.deliver.tcpto", EXIT_TEMP),
    # supervision
    "svscan": ("indimail.daemontools.svscan", EXIT_TEMP),
    "svscanboot": ("indimail.daemontools.svscanboot", EXIT_TEMP),
    "supervise": ("indimail.daemontools.supervise", EXIT_TEMP),
    "svc": ("indimail.daemontools.svctl", EXIT_TEMP),
    "svstat": ("indimail.daemontools.svctl", EXIT_TEMP),
    "svok": ("indimail.daemontools.svctl", EXIT_TEMP),
    "svps": ("indimail.daemontools.svps", EXIT_TEMP),
    "multilog": ("indimail.daemontools.multilog", EXIT_TEMP),
    "envdir": ("indimail.daemontools.tools", EXIT_TEMP),
    "envuidgid": ("indimail.daemontools.tools", EXIT_TEMP),
    "setuidgid": ("indimail.daemontools.tools", EXIT_TEMP),
    "softlimit": ("indimail.daemontools.tools", EXIT_TEMP),
    "setlock": ("indimail.daemontools.tools", EXIT_TEMP),
    "fghack": ("indimail.daemontools.tools", EXIT_TEMP),
    "pgrphack": ("indimail.daemontools.tools", EXIT_TEMP),
    "readproctitle": ("indimail.daemontools.tools", EXIT_TEMP),
    "tai64n": ("indimail.daemontools.tai64n_tools", EXIT_TEMP),
    "tai64nlocal": ("indimail.daemontools.tai64n_tools", EXIT_TEMP),
    # ucspi-tcp
    "tcprules": ("indimail.ucspi.tcprules_cmd:tcprules_main", EXIT_TEMP),
    "tcprulescheck": ("indimail.ucspi.tcprules_cmd:tcprulescheck_main", EXIT_TEMP),
    "tcpserver": ("indimail.ucspi.tcpserver", EXIT_TEMP),
    "tcpclient": ("indimail.ucspi.tcpclient", EXIT_TEMP),
    "rblsmtpd": ("indimail.ucspi.rblsmtpd", EXIT_TEMP),
    # receiving
    "qmail-smtpd": ("indimail.smtpd.qmail_smtpd", EXIT_TEMP),
    "qmail-cdb": ("indimail.smtpd.qmail_cdb", EXIT_TEMP),
    "qmail-qmtpd": ("indimail.smtpd.qmail_qmtpd", EXIT_TEMP),
    "qmail-qmqpd": ("indimail.smtpd.qmail_qmqpd", EXIT_TEMP),
    "qmail-qmqpc": ("indimail.smtpd.qmail_qmqpc", 81),
}

# Commands that run once per message and may end without the interpreter's
# teardown (see _fast_exit): they write with os.write or flush before return.
FAST_EXIT = frozenset({"sendmail", "qmail-inject", "qmail-queue"})


def _usage() -> str:
    return "usage: indimail COMMAND [ARGS...] | indimail --list"


def run(name: str, argv: list[str]) -> int:
    """Run command ``name`` with ``argv`` (``argv[0]`` is the name)."""
    entry = COMMANDS.get(name)
    if entry is None:
        sys.stderr.write(f"indimail: unknown command: {name}\n{_usage()}\n")
        return 100
    module_name, internal_code = entry
    try:
        module_name, _, func = module_name.partition(":")
        __import__(module_name)  # importlib.import_module without importlib (~1 ms)
        module = sys.modules[module_name]
        return int(getattr(module, func or "main")([name, *argv[1:]]) or 0)
    except Fatal as exc:
        _flush_stdout()
        sys.stderr.write(f"{name}: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_TEMP
    except BrokenPipeError:
        # Reader went away (qmail-qread | head): not an error worth a word.
        _silence_stdout()
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{name}: {code}\n")
        return 100
    except OutputError as exc:
        _silence_stdout()
        sys.stderr.write(f"{name}: unable to write output: {exc.strerror}\n")
        return internal_code
    except Exception as exc:
        _flush_stdout()
        sys.stderr.write(f"{name}: internal error: {type(exc).__name__}: {exc}\n")
        return internal_code


class OutputError(OSError):
    """Writing the command's standard output failed (a full disk, EIO)."""


class _Output(io.FileIO):
    """fd 1 whose write errors say they are output errors: the command then
    fails with "unable to write output", not with an internal error."""

    def write(self, data):  # type: ignore[no-untyped-def]
        try:
            return super().write(data)
        except BrokenPipeError:
            raise  # the reader went away: handled as such
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None


def _wrap_stdout() -> None:
    """Put :class:`_Output` under ``sys.stdout`` (and its ``buffer``), with
    the encoding and buffering Python chose for fd 1."""
    old = sys.stdout
    try:
        if old is None or old.fileno() != 1:
            return
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture)
        return
    buf = io.BufferedWriter(_Output(1, "w", closefd=False))
    sys.stdout = io.TextIOWrapper(
        buf, encoding=old.encoding, errors=old.errors, line_buffering=old.line_buffering
    )


def _flush_stdout() -> str | None:
    """Flush stdout; why that failed (stdout then silenced), else None.

    A reader that went away is no trouble (qmail-qread | head)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        _silence_stdout()
        return exc.strerror or str(exc)
    except Exception:
        _silence_stdout()
    return None


def _finish(name: str, code: int) -> int:
    """The exit code once the output is out: output that could not be
    written fails the command, as the original's "unable to write output"."""
    trouble = _flush_stdout()
    if trouble is None:
        return code
    sys.stderr.write(f"{name}: unable to write output: {trouble}\n")
    return code or EXIT_TEMP


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def _standard_fds() -> None:
    """Open /dev/null on whichever of fds 0, 1, 2 was closed at start, as
    Postfix's commands do: else the next file or socket opened (a queue
    file) would become stdin, stdout or stderr.  It is opened for the other
    direction, so reading stdin or writing stdout still fails with EBADF as
    from a closed fd (the original's "unable to read message" or "unable
    to write output", never an empty message queued); what goes to stderr
    is dropped.  Python has left ``sys.stdin``/``stdout``/``stderr`` None
    for such an fd."""
    streams = (
        (0, "stdin", "r", os.O_WRONLY),
        (1, "stdout", "w", os.O_RDONLY),
        (2, "stderr", "w", os.O_WRONLY),
    )
    for fd, attr, mode, flags in streams:
        if getattr(sys, attr) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        errors = "backslashreplace" if fd == 2 else None
        setattr(sys, attr, open(fd, mode, closefd=False, errors=errors))  # noqa: SIM115


def _fast_exit(code: int) -> None:
    """End the process now, skipping the interpreter's teardown (freeing every
    module and object: ~10 ms for sendmail, which runs once per message).

    Only for commands in FAST_EXIT, whose data all goes out by os.write or is
    flushed before they return, and only when nothing registered with atexit
    and no other thread runs; stdout and stderr are flushed first.
    """
    import atexit  # built in: free

    if atexit._ncallbacks():  # type: ignore[attr-defined]
        return
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            return
    os._exit(code & 0xFF)


def main(argv: list[str] | None = None) -> int:
    """Dispatch on argv[0] or on the first argument.

    Called without ``argv`` (as the program's entry point) a command in
    FAST_EXIT ends the process itself when done; with ``argv`` (tests, other
    callers) it always returns.
    """
    entry = argv is None
    if argv is None:
        argv = sys.argv
        if sys.stdin is None or sys.stdout is None or sys.stderr is None:
            _standard_fds()
    name = os.path.basename(argv[0]) if argv else "indimail"
    if entry:
        command = name if name in COMMANDS or len(argv) < 2 else argv[1]
        if command not in FAST_EXIT:  # those run per message, writing little
            _wrap_stdout()
    if name in COMMANDS:
        code = run(name, argv)
        if entry and name in FAST_EXIT:
            _fast_exit(_finish(name, code))
    elif len(argv) < 2:
        sys.stderr.write(_usage() + "\n")
        code = 100
    elif argv[1] in ("--list", "-l"):
        sys.stdout.write("".join(f"{cmd}\n" for cmd in sorted(COMMANDS)))
        code = 0
    elif argv[1] in ("--help", "-h"):
        sys.stdout.write(_usage() + "\n")
        code = 0
    else:
        name = argv[1]
        code = run(name, argv[1:])
        if entry and name in FAST_EXIT:
            _fast_exit(_finish(name, code))
    return _finish(name, code)


if __name__ == "__main__":
    sys.exit(main())
