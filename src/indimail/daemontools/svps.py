"""svps: a table of every service of the service directory.

``svps [-a|-m|-l|-d|-h] [--servicedir=dir]``: ``-a`` main and log services
(default), ``-m`` main only, ``-l`` log only, ``-d`` uptime in days/hours.
One line per service: name, state (up, down, wait, stopped when no
supervisor runs), uptime and ``pid`` (service) or ``spid`` (supervisor).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from indimail.core.errors import UsageError
from indimail.daemontools import status as statusfile
from indimail.daemontools.svctl import _ok_open
from indimail.daemontools.svdir import find_supervise

USAGE = "usage: svps [-a|-m|-l|-d|-h] [--servicedir=dir]"


def _uptime(secs: int, days: bool) -> str:
    if days:
        return (
            f"{secs // 86400:2d} days, {secs % 86400 // 3600:02d} hrs, "
            f"{secs % 3600 // 60:02d} mins, {secs % 60:02d} secs"
        )
    return f"{secs:7d} secs"


def describe(d: Path, days: bool) -> tuple[str, str, str]:
    sup, _ = find_supervise(str(d))
    if _ok_open(sup) is not None:
        return "stopped", "", ""
    try:
        st = statusfile.decode((sup / "status").read_bytes())
    except (OSError, ValueError):
        return "unknown", "", ""
    secs = max(0, int(time.time() - st.seconds))
    state = "wait" if st.wait else ("up" if st.up else "down")
    if st.up and st.pid:
        pid = f"pid {st.pid:7d}"
    elif st.spid:
        pid = f"spid {st.spid:7d}"
    else:
        pid = ""
    if st.paused and st.up:
        state += ",paused"
    return state, _uptime(secs, days), pid


def main(argv: list[str]) -> int:
    which = "a"
    days = False
    servicedir: str | None = None
    for arg in argv[1:]:
        if arg.startswith("--servicedir="):
            servicedir = arg.split("=", 1)[1]
        elif arg in ("-a", "-m", "-l"):
            which = arg[1]
        elif arg == "-d":
            days = True
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            return 0
        else:
            raise UsageError(USAGE)
    if servicedir is None:
        from indimail.core import paths

        servicedir = str(paths.get().servicedir)
    top = Path(servicedir)
    try:
        names = sorted(n for n in os.listdir(top) if not n.startswith(".") or n == ".svscan")
    except OSError as exc:
        raise UsageError(f"unable to read {top}: {exc.strerror}", code=111) from None
    rows = []
    for name in names:
        d = top / name
        if not d.is_dir():
            continue
        if which in "am" and name != ".svscan" and (d / "run").exists():
            rows.append((str(d), *describe(d, days)))
        if which in "al" and (d / "log").is_dir():
            rows.append((str(d / "log"), *describe(d / "log", days)))
    width = max((len(r[0]) for r in rows), default=10)
    for name, state, up, pid in rows:
        sys.stdout.write(f"{name:<{width}} {state:<8} {up}  {pid}".rstrip() + "\n")
    return 0
