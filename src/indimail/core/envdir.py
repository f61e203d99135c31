"""Reading envdir directories (daemontools semantics) and ``defaultqueue``.

File ``NAME`` sets ``NAME`` to its first line (trailing blanks and tabs
removed, NUL becomes newline); an empty file unsets ``NAME``.  Dot files are
skipped.  ``envdir`` the command and the injection tools share this code.
"""

from __future__ import annotations

import os
import sys

from indimail.core.errors import Fatal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from pathlib import Path

MAX_VALUE = 256  # envdir reads at most this much of a file


def read_envdir(directory: str | Path) -> dict[str, str | None]:
    """NAME -> value (None = unset) for each file in ``directory``."""
    result: dict[str, str | None] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise Fatal(111, f"unable to read envdir {directory}: {exc.strerror}") from None
    for name in names:
        if name.startswith("."):
            continue
        if "=" in name:
            raise Fatal(111, f"{directory}/{name}: invalid name for an environment variable")
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_VALUE)
        except IsADirectoryError:
            continue
        except OSError as exc:
            raise Fatal(111, f"unable to read {path}: {exc.strerror}") from None
        if not data:
            result[name] = None
            continue
        first = data.split(b"\n", 1)[0].rstrip(b" \t").replace(b"\0", b"\n")
        result[name] = first.decode("utf-8", "surrogateescape")
    return result


def apply_envdir(directory: str | Path, environ: MutableMapping[str, str]) -> None:
    """Set/unset variables of ``directory`` in ``environ``."""
    for name, value in read_envdir(directory).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value


def apply_defaultqueue(
    controldir: str | Path, environ: MutableMapping[str, str] | None = None, root_rc: bool = True
) -> bool:
    """Apply ``$HOME/.defaultqueue/`` then ``CONTROLDIR/defaultqueue/``.

    As the original: the user's dir unless SKIP_LOCAL_ENVIRONMENT (for root
    only when ``root_rc``), the control one only if QUEUE_BASE is still
    unset.  Returns True if anything was applied (paths must be reloaded).
    """
    if environ is None:
        environ = os.environ
    applied = False
    home = environ.get("HOME")
    if not environ.get("SKIP_LOCAL_ENVIRONMENT") and home and (os.getuid() != 0 or root_rc):
        local = os.path.join(home, ".defaultqueue")
        if os.access(local, os.X_OK) and os.path.isdir(local):
            try:
                apply_envdir(local, environ)
                applied = True
            except Fatal as exc:
                # The user's own settings: warn and go on, as the original.
                sys.stderr.write(f"warning: {exc.message}\n")
    if not environ.get("QUEUE_BASE"):
        system = os.path.join(controldir, "defaultqueue")
        try:
            os.stat(system)
        except FileNotFoundError:
            return applied
        except OSError as exc:
            raise Fatal(111, f"unable to access defaultqueue {system}: {exc.strerror}") from None
        if not os.access(system, os.R_OK | os.X_OK):
            raise Fatal(111, f"unable to access defaultqueue {system}: permission denied")
        apply_envdir(system, environ)
        applied = True
    return applied


# --- the envdir command's recursive scan (.envdir / .envfile) -------------


def _envdir_value(data: bytes) -> str | None:
    if not data:
        return None
    first = data.split(b"\n", 1)[0].rstrip(b" \t").replace(b"\0", b"\n")
    return first.decode("utf-8", "surrogateescape")


def read_envfile(path: Path) -> list[tuple[str, str | None]]:
    """``.envfile``: ``key=value`` lines (value kept as is, trailing blanks
    included), ``key`` alone unsets, blank lines and ``#`` comments skipped."""
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise Fatal(111, f"unable to read {path}: {exc.strerror}") from None
    ops: list[tuple[str, str | None]] = []
    for raw in text.split(b"\n"):
        line = raw.lstrip(b" \t")
        if not line.strip() or line.startswith(b"#"):
            continue
        key, sep, value = line.partition(b"=")
        name = key.rstrip(b" \t").decode("utf-8", "surrogateescape")
        if not sep:
            ops.append((name, None))
        else:
            ops.append((name, value.replace(b"\0", b"\n").decode("utf-8", "surrogateescape")))
    return ops


def envdir_operations(
    directory: Path,
    ignore_unreadable: bool = False,
    _seen: set[tuple[int, int]] | None = None,
) -> list[tuple[str, str | None]]:
    """(NAME, value or None=unset) in the order envdir applies them.

    As the fork's envdir: ``.envdir`` (a directory, or a link to one) is
    processed first and recursively; a ``.envdir`` *file* lists more
    directories (one a line, relative ones taken from ``directory``); then
    ``.envfile`` (``key=value`` lines); then the files of ``directory``, so
    its own files win.  A directory seen before (same inode) is skipped,
    which stops loops.  Other dot files are skipped.
    """
    from pathlib import Path  # the envdir command only (start cost, core/paths)

    seen = set() if _seen is None else _seen
    try:
        st = os.stat(directory)
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise Fatal(111, f"unable to read envdir {directory}: {exc.strerror}") from None
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return []
    seen.add(key)
    ops: list[tuple[str, str | None]] = []
    if ".envdir" in names:
        sub = Path(directory) / ".envdir"
        if sub.is_dir():
            ops += envdir_operations(sub, ignore_unreadable, seen)
        elif sub.exists():
            try:
                listing = sub.read_bytes().decode("utf-8", "surrogateescape")
            except OSError as exc:
                raise Fatal(111, f"unable to read {sub}: {exc.strerror}") from None
            for line in listing.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                target = Path(line) if line.startswith("/") else Path(directory) / line
                ops += envdir_operations(target, ignore_unreadable, seen)
    if ".envfile" in names:
        ops += read_envfile(Path(directory) / ".envfile")
    for name in names:
        if name.startswith("."):
            continue
        if "=" in name:
            raise Fatal(111, f"{directory}/{name}: invalid name for an environment variable")
        path = Path(directory) / name
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_VALUE)
        except IsADirectoryError:
            continue
        except PermissionError as exc:
            if ignore_unreadable:
                continue
            raise Fatal(111, f"unable to read {path}: {exc.strerror}") from None
        except OSError as exc:
            raise Fatal(111, f"unable to read {path}: {exc.strerror}") from None
        ops.append((name, _envdir_value(data)))
    return ops
