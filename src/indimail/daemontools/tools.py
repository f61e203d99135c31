"""Small daemontools programs that set up a process and exec a child:
envdir, envuidgid, setuidgid, softlimit, setlock, fghack, pgrphack,
readproctitle.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import signal

from indimail.core.errors import Fatal, UsageError
from indimail.core.proctitle import set_proc_name
from indimail.daemontools.privs import become, lookup


def _getopt(
    argv: list[str], letters: str, with_arg: str = ""
) -> tuple[list[tuple[str, str]], list[str]]:
    """Plain getopt: options stop at the first non-option or ``--``."""
    opts: list[tuple[str, str]] = []
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg == "--":
            break
        j = 1
        while j < len(arg):
            ch = arg[j]
            if ch in with_arg:
                value = arg[j + 1 :]
                if not value:
                    if not args:
                        raise UsageError(f"option -{ch} needs an argument")
                    value = args.pop(0)
                opts.append((ch, value))
                break
            if ch not in letters:
                raise UsageError(f"unknown option -{ch}")
            opts.append((ch, ""))
            j += 1
    return opts, args


def exec_child(args: list[str], env: dict[str, str] | None = None, path: str | None = None) -> None:
    """Exec ``args`` (PATH lookup in ``path``, default our PATH); 111 if not."""
    if not args:
        raise UsageError("no program to run")
    env = dict(os.environ) if env is None else env
    prog = args[0]
    if "/" not in prog:
        found = shutil.which(prog, path=path if path is not None else os.environ.get("PATH", ""))
        if found is None:
            raise Fatal(111, f"fatal: unable to run {prog}: file does not exist")
        prog = found
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execve(prog, args, env)
    except OSError as exc:
        raise Fatal(111, f"fatal: unable to run {args[0]}: {exc.strerror}") from None


# --- envdir ---------------------------------------------------------------


def envdir(argv: list[str]) -> int:
    from indimail.core.envdir import envdir_operations

    usage = "usage: envdir [-cwip] dir child"
    opts, args = _getopt(argv[1:], "cwip")
    flags = {o for o, _ in opts}
    if len(args) < 2 or not args[0] or not args[1]:
        raise UsageError(f"fatal: directory and program must be specified\n{usage}")
    old_path = os.environ.get("PATH", "")
    env = {} if "c" in flags else dict(os.environ)
    try:
        ops = envdir_operations(args[0], ignore_unreadable="i" in flags)
    except Fatal as exc:
        if "w" not in flags:
            raise Fatal(111, f"fatal: {exc.message}") from None
        os.write(2, f"envdir: warn: {exc.message}\n".encode())
        ops = []
        env = dict(os.environ)
    for name, value in ops:
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    exec_child(args[1:], env, env.get("PATH", "") if "p" in flags else old_path)
    return 111


def envuidgid(argv: list[str]) -> int:
    if len(argv) < 3:
        raise UsageError("usage: envuidgid account child")
    pw = lookup(argv[1])
    env = dict(os.environ)
    env["UID"] = str(pw.pw_uid)
    env["GID"] = str(pw.pw_gid)
    exec_child(argv[2:], env)
    return 111


def setuidgid(argv: list[str]) -> int:
    opts, args = _getopt(argv[1:], "es", "g")
    if len(args) < 2:
        raise UsageError("usage: setuidgid [-e] [-s] [-g gid1,gid2] account child")
    flags = {o for o, _ in opts}
    extra: list[str] = []
    for o, v in opts:
        if o == "g":
            extra += [g for g in v.split(",") if g]
    pw = become(args[0], supplementary="s" in flags, extra_groups=extra)
    env = dict(os.environ)
    if "e" in flags:
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    exec_child(args[1:], env)
    return 111


# --- softlimit ----------------------------------------------------------

_LIMITS = {
    "d": "RLIMIT_DATA",
    "s": "RLIMIT_STACK",
    "l": "RLIMIT_MEMLOCK",
    "a": "RLIMIT_AS",
    "o": "RLIMIT_NOFILE",
    "p": "RLIMIT_NPROC",
    "q": "RLIMIT_MSGQUEUE",
    "f": "RLIMIT_FSIZE",
    "c": "RLIMIT_CORE",
    "r": "RLIMIT_RSS",
    "t": "RLIMIT_CPU",
}


def _set_soft(letter: str, value: str) -> None:
    name = _LIMITS[letter]
    which = getattr(resource, name, None)
    if which is None:
        return  # not on this platform, as the original ignores it
    _soft, hard = resource.getrlimit(which)
    if value == "=":
        new = hard
    elif value in ("-1", "unlimited"):
        new = resource.RLIM_INFINITY
    else:
        try:
            new = int(value)
        except ValueError:
            raise UsageError(f"fatal: bad limit -{letter} {value!r}") from None
        if hard != resource.RLIM_INFINITY and new > hard:
            new = hard
    try:
        resource.setrlimit(which, (new, hard))
    except (OSError, ValueError) as exc:
        raise Fatal(111, f"fatal: unable to set {name}: {exc}") from None


def softlimit(argv: list[str]) -> int:
    opts, args = _getopt(argv[1:], "", "mdslaopqfcrt")
    if not args:
        raise UsageError("usage: softlimit [-mdslaopqfcrt n] child")
    for o, v in opts:
        if o == "m":
            for letter in "dsla":
                _set_soft(letter, v)
        else:
            _set_soft(o, v)
    exec_child(args)
    return 111


# --- setlock ------------------------------------------------------------


def setlock(argv: list[str]) -> int:
    opts, args = _getopt(argv[1:], "nNxX")
    if len(args) < 2:
        raise UsageError("usage: setlock [-nNxX] file program [arg ...]")
    nowait = False
    quiet_exit = False
    for o, _ in opts:
        nowait = {"n": True, "N": False}.get(o, nowait)
        quiet_exit = {"x": True, "X": False}.get(o, quiet_exit)
    try:
        fd = os.open(args[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.set_inheritable(fd, True)
        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nowait else 0))
    except OSError as exc:
        if quiet_exit:
            return 0
        raise Fatal(111, f"fatal: unable to lock {args[0]}: {exc.strerror}") from None
    exec_child(args[1:])
    return 111


# --- fghack, pgrphack ---------------------------------------------------


def fghack(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: fghack child")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            # many copies of the write end: a daemon that closes some of
            # its descriptors before forking still keeps one open
            for _ in range(30):
                os.set_inheritable(os.dup(w), True)
            os.set_inheritable(w, True)
            exec_child(argv[1:])
        except Fatal as exc:
            os.write(2, f"fghack: {exc.message}\n".encode())
        finally:
            os._exit(111)
    os.close(w)
    while True:
        try:
            if not os.read(r, 4096):
                break
        except InterruptedError:  # pragma: no cover
            continue
    _pid, wstat = os.waitpid(pid, 0)
    if os.WIFSIGNALED(wstat):
        raise Fatal(111, "fatal: child crashed")
    return os.WEXITSTATUS(wstat)


def pgrphack(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: pgrphack child")
    try:
        os.setsid()
    except OSError:
        try:
            os.setpgid(0, 0)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to set process group: {exc.strerror}") from None
    exec_child(argv[1:])
    return 111


# --- readproctitle ------------------------------------------------------


def readproctitle(argv: list[str]) -> int:
    """Keep the tail of stdin as the process title (``ps``); the original
    writes it over its own ``dots`` argument, we keep the last bytes in
    /proc/self/comm (15 bytes) and in memory."""
    if len(argv) < 3:
        raise UsageError("usage: readproctitle io dots")
    width = len(argv[-1])
    tail = bytearray(b"." * width)
    while True:
        try:
            data = os.read(0, 4096)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to read input: {exc.strerror}") from None
        if not data:
            return 0
        tail += data
        del tail[: len(tail) - width]
        set_proc_name(bytes(tail).replace(b"\n", b" ")[-15:].decode("ascii", "replace"))


def main(argv: list[str]) -> int:
    name = os.path.basename(argv[0])
    table = {
        "envdir": envdir,
        "envuidgid": envuidgid,
        "setuidgid": setuidgid,
        "softlimit": softlimit,
        "setlock": setlock,
        "fghack": fghack,
        "pgrphack": pgrphack,
        "readproctitle": readproctitle,
    }
    func = table.get(name)
    if func is None:
        raise UsageError(f"unknown command {name}")
    return func(argv)
