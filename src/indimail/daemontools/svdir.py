"""Where a service's ``supervise/`` directory lives.

As the fork: when the run directory holds ``svscan/`` (svscan creates it
unless ``DISABLE_RUN`` is set) the state of service ``s`` is kept in
``RUNDIR/svscan/s/supervise`` and that of its logger in
``RUNDIR/svscan/s/log/supervise``; otherwise in ``s/supervise``.  RUNDIR
comes from :mod:`indimail.core.paths` (``/run`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path


def run_root(environ=None) -> Path | None:
    """``RUNDIR/svscan`` if state goes to the run directory, else None."""
    env = os.environ if environ is None else environ
    if env.get("DISABLE_RUN"):
        return None
    from indimail.core import paths

    root = paths.load(env).rundir / "svscan"
    return root if root.is_dir() else None


def state_dir(svdir: Path, name: str, parent: str | None, root: Path | None) -> Path:
    """Directory holding ``supervise/`` for service ``name`` (``log`` with
    ``parent`` for a logger) whose service directory is ``svdir``."""
    if root is None:
        return svdir
    if parent is not None:
        return root / parent / name
    return root / name


def find_supervise(directory: str, environ=None) -> tuple[Path, bool]:
    """For svc/svstat/svok: the ``supervise`` dir for a service dir as
    given on the command line, and whether it was found in the run fs."""
    local = Path(directory) / "supervise"
    if local.exists():
        return local, False
    root = run_root(environ)
    if root is None:
        return local, False
    absdir = Path(os.path.abspath(directory))
    base = absdir.name
    if base == "log":
        return root / absdir.parent.name / "log" / "supervise", True
    candidate = root / base / "supervise"
    if candidate.exists():
        return candidate, True
    # svstat . inside RUNDIR/svscan/s/log
    return root / absdir.parent.name / base / "supervise", True
