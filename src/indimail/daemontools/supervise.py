"""supervise dir [parent_ident]: supervise one service directory.

The same :class:`~indimail.daemontools.service.Service` that svscan runs
in-process for every service, here alone in its own process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from indimail.core.errors import Fatal, UsageError
from indimail.core.proctitle import set_proc_name
from indimail.daemontools import logrun, multilog, svdir
from indimail.daemontools.loop import Loop
from indimail.daemontools.privs import become
from indimail.daemontools.service import Busy, Service


def logger_runner(run_file: Path, environ) -> tuple | None:
    """(runner, child_setup) that fork multilog for a standard log/run."""
    if environ.get("EXEC_LOGGERS"):
        return None
    shape = logrun.parse_file(str(run_file))
    if shape is None:
        return None

    def setup() -> None:
        if shape.stderr_to_stdout:
            os.dup2(1, 2)
        os.closerange(3, 1 << 16)
        set_proc_name("multilog")
        if shape.user:
            become(shape.user)

    def runner() -> int:
        try:
            return multilog.run_script(list(shape.script), 0)
        except Fatal as exc:
            os.write(2, f"multilog: fatal: {exc.message}\n".encode("utf-8", "replace"))
            return exc.code

    return runner, setup


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) > 3:
        raise UsageError("usage: supervise dir [parent_ident]")
    name = argv[1]
    if name.startswith(("/", ".")):
        raise UsageError("dir cannot start with '/' or '.'")
    parent = argv[2] if len(argv) == 3 else None
    ident = f"{parent}/log" if parent else name
    try:
        os.chdir(name)
    except OSError as exc:
        raise Fatal(111, f"fatal: unable to chdir to {name}: {exc.strerror}") from None
    here = Path(os.getcwd())
    env = dict(os.environ)
    root = svdir.run_root(env)
    statedir = svdir.state_dir(here, name, parent if name == "log" else None, root)
    if root is not None and name == "log" and parent is None:
        statedir = root / here.parent.name / "log"
    loop = Loop()
    set_proc_name("supervise")
    hooks = logger_runner(here / "run", env)
    done: list[Service] = []
    service = Service(
        loop,
        here,
        statedir,
        name,
        ident,
        env,
        runner=hooks[0] if hooks else None,
        child_setup=hooks[1] if hooks else None,
        on_exit=done.append,
    )
    try:
        service.open()
    except Busy as exc:
        raise Fatal(100, f"fatal: {exc}") from None
    except OSError as exc:
        raise Fatal(111, f"fatal: {ident}: {exc.strerror or exc}") from None
    loop.on_signal(signal.SIGTERM, service.terminate)
    service.begin()
    while not done:
        loop.run_once()
    return 0
