"""svc, svstat, svok: talk to a supervisor through ``supervise/``.

They work with any supervisor that keeps the daemontools interface: ours
(standalone ``supervise`` or in-process under ``svscan``), the fork's and
Debian's daemontools.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

from indimail.core.errors import UsageError
from indimail.daemontools import status as statusfile
from indimail.daemontools.svdir import find_supervise

SVC_LETTERS = "udropchUaitkxq12GwW"
SVC_USAGE = (
    "svc options: u up, d down, r restart, o once, x exit, p pause, c continue h hup\n"
    "             a alarm, i interrupt, t term, k kill, q quit, U|1 SIGUSR1, 2 SIGUSR2\n"
    "             G process group, w wait for up, W wait for down, T timeout"
)


def _warn(prog: str, text: str) -> None:
    sys.stderr.write(f"{prog}: warning: {text}\n")
    sys.stderr.flush()


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout


def svc(argv: list[str]) -> int:
    data = ""
    timeout = 0
    wait_opt = ""
    do_sleep = False
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            opt = arg[j]
            if opt == "T":
                value = arg[j + 1 :]
                if not value:
                    i += 1
                    if i >= len(args):
                        raise UsageError(SVC_USAGE)
                    value = args[i]
                try:
                    timeout = int(value)
                except ValueError:
                    raise UsageError(f"svc: bad timeout {value!r}\n{SVC_USAGE}") from None
                break
            if opt not in SVC_LETTERS:
                raise UsageError(SVC_USAGE)
            if opt in "wW":
                wait_opt = opt
            elif opt not in data and len(data) < 20:
                data += opt
            if opt in "udr":
                do_sleep = True
            j += 1
        i += 1
    dirs = args[i:]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    code = 0
    if data:
        for d in dirs:
            code = _svc_send(d, data, code)
    if wait_opt:
        if data and do_sleep:
            time.sleep(1)
        for d in dirs:
            code = _svc_wait(d, wait_opt, timeout, code)
    return code


def _svc_send(d: str, data: str, code: int) -> int:
    if not os.path.isdir(d):
        _warn("svc", f"unable to chdir to directory {d}: file does not exist")
        return code
    sup, _ = find_supervise(d)
    try:
        fd = os.open(sup / "control", os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            _warn("svc", f"unable to control {d}: supervise not running")
            return code or 2
        _warn("svc", f"unable to control {d}: {exc.strerror}")
        return code or 1
    try:
        os.set_blocking(fd, True)
        os.write(fd, data.encode("ascii"))
    except OSError as exc:
        _warn("svc", f"error writing commands to {d}: {exc.strerror}")
    finally:
        os.close(fd)
    return code


def _svc_wait(d: str, opt: str, timeout: int, code: int) -> int:
    sup, _ = find_supervise(d)
    what = "up" if opt == "w" else "down"
    sys.stderr.write(f"waiting for {d} to be {what} ... ")
    sys.stderr.flush()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(0, timeout))
    try:
        fd = os.open(sup / ("up" if opt == "w" else "dn"), os.O_WRONLY)
    except _Timeout:
        sys.stderr.write("timed out\n")
        return code or 3
    except OSError as exc:
        sys.stderr.write("failed\n")
        _warn("svc", f"unable to wait for {d}: {exc.strerror}")
        return code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    os.close(fd)
    sys.stderr.write("ok\n")
    return code


def _ok_open(sup: Path) -> int | None:
    """errno of opening ``ok`` for writing, None if supervise lives."""
    try:
        fd = os.open(sup / "ok", os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno or errno.EIO
    os.close(fd)
    return None


def svstat_line(d: str) -> tuple[str | None, int]:
    """(line, exit code) for one service dir; line None when nothing to show."""
    if not os.path.isdir(d):
        _warn("svstat", f"unable to chdir to {d}: file does not exist")
        return None, 111
    try:
        os.stat(os.path.join(d, "down"))
        normallyup = False
    except FileNotFoundError:
        normallyup = True
    except OSError as exc:
        _warn("svstat", f"unable to stat {d}/down: {exc.strerror}")
        return None, 111
    sup, _ = find_supervise(d)
    err = _ok_open(sup)
    if err is not None:
        if err in (errno.ENXIO, errno.ENOENT):
            _warn("svstat", f"unable to open {d}/supervise/ok: supervise not running")
            return None, 2
        _warn("svstat", f"unable to open {d}/supervise/ok: {os.strerror(err)}")
        return None, 111
    try:
        with open(sup / "status", "rb") as fh:
            data = fh.read(64)
    except FileNotFoundError:
        _warn("svstat", f"unable to open {d}/supervise/status: file does not exist")
        return None, 2
    except OSError as exc:
        _warn("svstat", f"unable to read {d}/supervise/status: {exc.strerror}")
        return None, 111
    try:
        st = statusfile.decode(data)
    except ValueError:
        _warn("svstat", f"unable to read {d}/supervise/status: bad format")
        return None, 100
    return format_status(d, st, normallyup)


def format_status(d: str, st: statusfile.Status, normallyup: bool) -> tuple[str, int]:
    now_ns = time.time_ns()
    when_ns = st.seconds * 1_000_000_000 + st.nanos
    elapsed = max(0, now_ns - when_ns)
    secs, nanos = divmod(elapsed, 1_000_000_000)
    code = 3 if st.paused else 111
    waiting = st.wait != 0
    out = [f"{d}: ", "wait " if waiting else ("up " if st.up else "down ")]
    out.append(f"{secs}.{nanos:09d} seconds")
    if st.up and not normallyup:
        out.append(", normally down")
    if not st.up and normallyup:
        out.append(", normally up")
    if st.up and st.paused:
        out.append(", paused")
    if not st.up and st.want == "u":
        code = 4
        out.append(", want up")
    if st.up and st.want == "d":
        code = 5
        out.append(", want down")
    if st.up and st.pid:
        if code not in (3, 5):
            code = 0
        alive = statusfile.exists_pid(st.pid)
        out.append(f"{'  pid' if alive else ' ?pid'} {st.pid} ")
    else:
        code = 4 if code == 4 else 1
        if st.spid:
            out.append(f" spid {st.spid} ")
    if waiting:
        code = 6
        if st.wait > 0 and st.wait - secs > 0:
            out.append(f"remaining {st.wait - secs} seconds")
    return "".join(out), code


def svstat(argv: list[str]) -> int:
    code = 0
    lines = []
    for d in argv[1:]:
        line, code = svstat_line(d)
        if line is not None:
            lines.append(line + "\n")
            sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


def svok(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: svok dir")
    d = argv[1]
    if not os.path.isdir(d):
        raise UsageError(f"unable to chdir to {d}: file does not exist", code=111)
    sup, _ = find_supervise(d)
    return 0 if _ok_open(sup) is None else 100


def main(argv: list[str]) -> int:
    name = os.path.basename(argv[0])
    if name == "svc":
        return svc(argv)
    if name == "svstat":
        return svstat(argv)
    if name == "svok":
        return svok(argv)
    raise UsageError(f"unknown command {name}")
