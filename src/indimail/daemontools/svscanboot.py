"""svscanboot [scandir...]: what a boot method runs to start svscan.

For each scan directory (default: first line of control
``servicedir.conf``, else the configured service directory):

* standard input, output and error go to /dev/null, the working
  directory is ``/``;
* supervisors left by an earlier run (standalone ``supervise`` processes)
  are told to go down and exit (``svc -dx`` on every service, every
  ``log`` and ``.svscan/log``) -- unless an svscan still runs on that
  directory, which is refused instead;
* svscan gets an environment made only of a default ``PATH`` and the
  contents of ``.svscan/variables`` (an envdir);
* its output goes to the ``.svscan/log`` service when
  ``.svscan/variables/SCANLOG`` is set (svscan then connects itself to
  that logger), else through a pipe to ``readproctitle``.

svscan itself runs in this process (no new interpreter); readproctitle is
a forked child.  With several directories each gets its own forked svscan
and svscanboot waits for them all.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal
from indimail.daemontools import svscan, tools
from indimail.daemontools.svdir import find_supervise

DOTS = "." * 400
KEEP = ("INDIMAIL_PATHS",)  # how this implementation finds its paths file


def default_scandir(p: _paths.Paths) -> str:
    """``servicedir.conf`` (first line) in the control dir, else the
    configured service directory."""
    try:
        with open(p.controldir / "servicedir.conf", encoding="utf-8", errors="replace") as fh:
            line = fh.readline().strip()
        if line:
            return line
    except OSError:
        pass
    return str(p.servicedir)


def boot_environ(sdir: Path, p: _paths.Paths, outer: dict[str, str]) -> dict[str, str]:
    """PATH plus ``.svscan/variables``; nothing else of the caller's."""
    from indimail.core.envdir import envdir_operations

    env = {"PATH": f"{p.bindir}:/bin:/usr/local/bin:{p.sbindir}:/sbin:/usr/bin:/usr/sbin"}
    for key in KEEP:
        if outer.get(key):
            env[key] = outer[key]
    variables = sdir / svscan.SVSCANLOG / "variables"
    if variables.is_dir():
        for name, value in envdir_operations(variables):
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    return env


def stop_leftovers(sdir: Path, env: dict[str, str]) -> None:
    """``svc -dx`` for every supervisor still listening in ``sdir``."""
    dirs = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(sdir)):
            if name.startswith("."):
                continue
            dirs += [sdir / name, sdir / name / "log"]
    dirs.append(sdir / svscan.SVSCANLOG / "log")
    for d in dirs:
        if not d.is_dir():
            continue
        sup = find_supervise(str(d), env)[0]
        try:
            fd = os.open(sup / "control", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # nobody supervises it
        with contextlib.suppress(OSError):
            os.write(fd, b"dx")
        os.close(fd)


def _null_stdio() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def boot_one(sdir: Path, outer: dict[str, str]) -> int:
    """Become svscan for ``sdir`` (returns when svscan ends)."""
    p = _paths.load(outer)
    env = boot_environ(sdir, p, outer)
    pidfile = svscan.pidfile_path(sdir, env)
    holder = svscan.running_svscan(pidfile)
    if holder:
        raise Fatal(111, f"fatal: [svscan] already running (pid {holder}, {pidfile})")
    stop_leftovers(sdir, env)
    _null_stdio()
    os.chdir("/")
    if not env.get("SCANLOG"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # readproctitle: svscan's errors shown by ps
            code = 111
            try:
                os.close(w)
                os.dup2(r, 0)
                os.close(r)
                code = tools.readproctitle(["readproctitle", str(sdir), "errors:", DOTS])
            except BaseException:
                pass
            finally:
                os._exit(code)
        os.close(r)
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
    os.environ.clear()
    os.environ.update(env)
    _paths.reload()
    return svscan.main(["svscan", str(sdir)])


def main(argv: list[str]) -> int:
    outer = dict(os.environ)
    dirs = argv[1:] or [default_scandir(_paths.load(outer))]
    if len(dirs) == 1:
        return boot_one(Path(os.path.abspath(dirs[0])), outer)
    children = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        pid = os.fork()
        if pid == 0:
            code = 111
            try:
                code = boot_one(Path(os.path.abspath(d)), outer)
            except Fatal as exc:
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"svscanboot: {exc.message}\n")
                code = exc.code
            except BaseException:
                pass
            finally:
                os._exit(code)
        children.append(pid)
    code = 0
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            _pid, wstat = os.waitpid(pid, 0)
            code = code or os.waitstatus_to_exitcode(wstat)
    return code
