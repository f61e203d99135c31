"""Where everything lives: the only module that knows directory names.

Three layers, later wins:

1. the FHS defaults of the platform (Linux; FreeBSD and macOS), the
   original's ``conf-*`` values;
2. a ``KEY=value`` file (``indimail-paths.conf``) that packaging writes
   beside the binary, or that a rootless instance keeps at its top;
3. environment variables with the original's names (``QMAILHOME``,
   ``SYSCONFDIR``, ``CONTROLDIR``, ``QUEUE_BASE``...).

The paths file is looked for, in order: ``$INDIMAIL_PATHS``; then
``<dir of argv[0]>/../indimail-paths.conf`` without resolving symlinks, so
``/srv/mta/bin/sendmail`` (a symlink to the one binary) runs against the
instance in ``/srv/mta``; then beside the real executable (frozen tree) or
the package (source tree).

Role accounts (``qmailq``, ``qmails``...) are names, resolved at run time;
the file may map them (``USER_QMAILQ=alice``), which a rootless instance
does for every role.
"""

from __future__ import annotations

import os
import sys

from indimail.core.errors import Fatal
from indimail.core.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

# pathlib is imported only where a Path is made (load()): with its imports
# (re, enum, functools, urllib.parse, ipaddress...) it costs a command about
# 10 ms at start, a third of a frozen sendmail.  The commands that start once
# per message (sendmail, qmail-inject, qmail-queue) use places(), the same
# settings as plain strings.

PATHS_FILE = "indimail-paths.conf"

# Roles of the original (conf-users / conf-groups) and their default names.
USER_ROLES = (
    "alias",
    "qmaild",
    "qmaill",
    "root",
    "qmailp",
    "qmailq",
    "qmailr",
    "qmails",
    "indimail",
    "qscand",
)
GROUP_ROLES = ("qmail", "nofiles", "indimail", "qscand", "qcerts")

_LINUX = {
    "PREFIX": "/usr",
    "QMAILHOME": "/var/indimail",
    "SYSCONFDIR": "/etc/indimail",
    "SHAREDDIR": "/usr/share/indimail",
    "LIBEXECDIR": "/usr/libexec/indimail",
    "SERVICEDIR": "/service",
    "LOGDIR": "/var/log/svc",
    "RUNDIR": "/run",
}
_BSD = {
    "PREFIX": "/usr/local",
    "QMAILHOME": "/var/indimail",
    "SYSCONFDIR": "/usr/local/etc/indimail",
    "SHAREDDIR": "/usr/local/share/indimail",
    "LIBEXECDIR": "/usr/local/libexec/indimail",
    "SERVICEDIR": "/usr/local/etc/indimail/sv",
    "LOGDIR": "/var/log/svc",
    "RUNDIR": "/var/run",
}

# Keys a paths file or the environment may set.
KEYS = (
    "PREFIX",
    "BINDIR",
    "SBINDIR",
    "QMAILHOME",
    "SYSCONFDIR",
    "CONTROLDIR",
    "SHAREDDIR",
    "LIBEXECDIR",
    "SERVICEDIR",
    "LOGDIR",
    "RUNDIR",
    "QUEUE_BASE",
    "QUEUE_COUNT",
    "QUEUE_START",
    "ASSIGNDIR",
    "CERTDIR",
    "PLUGINDIR",
    "CONFSPLIT",
    "BIGTODO",
)
DIRSPLIT = 151  # conf-split: the compile-time split of the original


def platform_defaults(platform: str | None = None) -> dict[str, str]:
    """The conf-* defaults of ``platform`` (``sys.platform`` form)."""
    platform = platform or sys.platform
    if platform.startswith(("freebsd", "darwin", "openbsd", "netbsd", "dragonfly")):
        return dict(_BSD)
    return dict(_LINUX)


def parse_paths_file(path: str | Path) -> dict[str, str]:
    """Read ``KEY=value`` lines; ``#`` comments and blank lines are skipped.

    A line that is not ``KEY=value`` is an error naming the file and line,
    since silently ignoring it would put mail in the wrong place.
    """
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise Fatal(111, f"unable to read paths file {path}: {exc.strerror}") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise Fatal(111, f"{path}:{lineno}: expected KEY=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _candidate_files(environ: Mapping[str, str], argv0: str | None) -> list[str]:
    explicit = environ.get("INDIMAIL_PATHS")
    if explicit:
        return [explicit]
    found: list[str] = []
    if argv0 and os.sep in argv0:
        # DIR/bin/NAME -> DIR/indimail-paths.conf, symlinks not resolved
        found.append(os.path.join(_parent(_parent(os.path.abspath(argv0))), PATHS_FILE))
    if getattr(sys, "frozen", False):
        found.append(os.path.join(os.path.dirname(os.path.realpath(sys.executable)), PATHS_FILE))
    else:
        found.append(os.path.join(_parent(os.path.dirname(os.path.realpath(__file__))), PATHS_FILE))
    return found


def norm_path(path: str) -> str:
    """What ``str(Path(path))`` gives (no doubled or trailing slashes, no
    ``.`` parts), without pathlib; "" stays ""."""
    if not path:
        return path
    lead = "/" if path.startswith("/") else ""
    if path.startswith("//") and not path.startswith("///"):
        lead = "//"  # POSIX leaves the meaning of exactly two to the system
    return lead + "/".join(p for p in path.split("/") if p and p != ".") or lead or "."


def _parent(path: str) -> str:
    """Path.parent of an absolute path, as a string."""
    return os.path.dirname(path.rstrip("/")) or "/"


def _int(values: Mapping[str, str], key: str, default: int, where: str) -> int:
    raw = values.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise Fatal(111, f"{key}={raw!r} is not a number ({where})") from None


class _Roles(Record):
    """Role names of the original mapped to accounts (``users``/``groups``)."""

    __slots__ = ()
    users: dict[str, str]
    groups: dict[str, str]

    def user(self, role: str) -> str:
        """Account name for ``role`` (e.g. ``qmailq``)."""
        return self.users.get(role, role)

    def group(self, role: str) -> str:
        """Group name for ``role`` (e.g. ``qmail``)."""
        return self.groups.get(role, role)


class Paths(_Roles):
    """The resolved directories, queue geometry and role names (immutable,
    compared by value: a frozen dataclass written out, see core/record.py)."""

    _fields = (
        "prefix",
        "bindir",
        "sbindir",
        "qmailhome",
        "sysconfdir",
        "controldir",
        "shareddir",
        "libexecdir",
        "servicedir",
        "logdir",
        "rundir",
        "queue_base_env",  # QUEUE_BASE from env or file; None: ask control/queue_base
        "queue_count",
        "queue_start",
        "assigndir",
        "certdir",
        "plugindir",
        "conf_split",
        "bigtodo",
        "users",
        "groups",
        "source",  # the paths file used, if any
        "rootless",  # a rootless instance: every role is one account
    )
    __slots__ = _fields
    prefix: Path
    bindir: Path
    sbindir: Path
    qmailhome: Path
    sysconfdir: Path
    controldir: Path
    shareddir: Path
    libexecdir: Path
    servicedir: Path
    logdir: Path
    rundir: Path
    queue_base_env: Path | None
    queue_count: int
    queue_start: int
    assigndir: Path
    certdir: Path
    plugindir: Path
    conf_split: int
    bigtodo: int
    users: dict[str, str]
    groups: dict[str, str]
    source: Path | None
    rootless: bool

    def __init__(
        self,
        prefix: Path,
        bindir: Path,
        sbindir: Path,
        qmailhome: Path,
        sysconfdir: Path,
        controldir: Path,
        shareddir: Path,
        libexecdir: Path,
        servicedir: Path,
        logdir: Path,
        rundir: Path,
        queue_base_env: Path | None,
        queue_count: int,
        queue_start: int,
        assigndir: Path,
        certdir: Path,
        plugindir: Path,
        conf_split: int,
        bigtodo: int,
        users: dict[str, str] | None = None,
        groups: dict[str, str] | None = None,
        source: Path | None = None,
        rootless: bool = False,
    ) -> None:
        values = locals()
        for name in self._fields:
            self._set(name, values[name])
        self._set("users", {} if users is None else users)
        self._set("groups", {} if groups is None else groups)

    @property
    def queue_base(self) -> Path:
        """QUEUE_BASE: env/file, else control ``queue_base``, else QMAILHOME/queue."""
        if self.queue_base_env is not None:
            return self.queue_base_env
        first = _queue_base_control(self.controldir)
        if first:
            from pathlib import Path

            return Path(first)
        return self.qmailhome / "queue"

    def queue_dirs(self) -> list[Path]:
        """Every queue ``QUEUE_BASE/queue<n>`` for n in START..START+COUNT-1."""
        base = self.queue_base
        return [
            base / f"queue{n}" for n in range(self.queue_start, self.queue_start + self.queue_count)
        ]


def _values(
    environ: Mapping[str, str] | None, argv0: str | None, platform: str | None
) -> tuple[dict, str | None]:
    """The settings (defaults, then the paths file, then the environment),
    by Paths field name, and the paths file used; directories as strings,
    nothing imported."""
    if environ is None:
        environ = os.environ
    if argv0 is None and sys.argv:
        argv0 = sys.argv[0]
    values = platform_defaults(platform)
    source = None
    for candidate in _candidate_files(environ, argv0):
        if os.path.isfile(candidate):
            values.update(parse_paths_file(candidate))
            source = candidate
            break
        if environ.get("INDIMAIL_PATHS"):
            raise Fatal(111, f"paths file {candidate} (INDIMAIL_PATHS) does not exist")
    from_env = set()
    for key in KEYS:
        if environ.get(key):
            values[key] = environ[key]
            from_env.add(key)

    def where(key: str) -> str:
        """Where a bad value came from: the environment overrides the file."""
        return "environment" if key in from_env else source or "built-in defaults"

    prefix = norm_path(values.get("PREFIX") or "/usr")
    sysconfdir = norm_path(values.get("SYSCONFDIR") or "/etc/indimail")
    split = _int(values, "CONFSPLIT", DIRSPLIT, where("CONFSPLIT"))
    if split < 1:
        raise Fatal(111, f"CONFSPLIT={split} must be at least 1 ({where('CONFSPLIT')})")

    def dirs(key: str, default: str) -> str:
        return norm_path(values.get(key) or default)

    out = {
        "prefix": prefix,
        "bindir": dirs("BINDIR", f"{prefix}/bin"),
        "sbindir": dirs("SBINDIR", f"{prefix}/sbin"),
        "qmailhome": dirs("QMAILHOME", "/var/indimail"),
        "sysconfdir": sysconfdir,
        "controldir": dirs("CONTROLDIR", f"{sysconfdir}/control"),
        "shareddir": dirs("SHAREDDIR", "/usr/share/indimail"),
        "libexecdir": dirs("LIBEXECDIR", "/usr/libexec/indimail"),
        "servicedir": dirs("SERVICEDIR", "/service"),
        "logdir": dirs("LOGDIR", "/var/log/svc"),
        "rundir": dirs("RUNDIR", "/run"),
        "queue_base_env": norm_path(values.get("QUEUE_BASE") or ""),
        "queue_count": _int(values, "QUEUE_COUNT", 5, where("QUEUE_COUNT")),
        "queue_start": _int(values, "QUEUE_START", 1, where("QUEUE_START")),
        "assigndir": dirs("ASSIGNDIR", f"{sysconfdir}/users"),
        "certdir": dirs("CERTDIR", f"{sysconfdir}/certs"),
        "plugindir": dirs("PLUGINDIR", f"{prefix}/lib/indimail/plugins"),
        "conf_split": min(split, DIRSPLIT),
        "bigtodo": _int(values, "BIGTODO", 0, where("BIGTODO")),
        "users": {role: values.get(f"USER_{role.upper()}", role) for role in USER_ROLES},
        "groups": {role: values.get(f"GROUP_{role.upper()}", role) for role in GROUP_ROLES},
        "rootless": values.get("ROOTLESS", "") not in ("", "0"),
    }
    return out, source


# Paths fields that are not directories (every other field is one); Places
# has them all too, "source" last.
_NOT_DIRS = (
    "queue_base_env",  # Places: "" when unset, ask control/queue_base
    "queue_count",
    "queue_start",
    "conf_split",
    "bigtodo",
    "users",
    "groups",
    "rootless",
    "source",
)
_DIR_FIELDS = tuple(f for f in Paths._fields if f not in _NOT_DIRS)


def load(
    environ: Mapping[str, str] | None = None, argv0: str | None = None, platform: str | None = None
) -> Paths:
    """Build the Paths object from defaults, the paths file and ``environ``."""
    from pathlib import Path

    values, source = _values(environ, argv0, platform)
    kw: dict = dict(values)
    for name in _DIR_FIELDS:
        kw[name] = Path(values[name])
    kw["queue_base_env"] = Path(values["queue_base_env"]) if values["queue_base_env"] else None
    kw["source"] = Path(source) if source else None
    return Paths(**kw)


class Places(_Roles):
    """What the commands that start once per message need of :class:`Paths`,
    as plain strings (no pathlib): the control directory, the queues and
    the role names.  Same sources, same precedence as :func:`load`."""

    _fields = ("controldir", "qmailhome", "sysconfdir", "rundir", *_NOT_DIRS)
    __slots__ = _fields
    controldir: str
    qmailhome: str
    sysconfdir: str
    rundir: str
    queue_base_env: str
    queue_count: int
    queue_start: int
    conf_split: int
    bigtodo: int
    users: dict[str, str]
    groups: dict[str, str]
    rootless: bool
    source: str | None

    def __init__(self, values: Mapping, source: str | None) -> None:
        for name in self._fields[:-1]:
            self._set(name, values[name])
        self._set("source", source)

    @property
    def queue_base(self) -> str:
        """As :attr:`Paths.queue_base`, a string."""
        if self.queue_base_env:
            return self.queue_base_env
        return _queue_base_control(self.controldir) or f"{self.qmailhome}/queue"


def load_places(
    environ: Mapping[str, str] | None = None, argv0: str | None = None, platform: str | None = None
) -> Places:
    """:class:`Places` from defaults, the paths file and ``environ``."""
    return Places(*_values(environ, argv0, platform))


def _queue_base_control(controldir: object) -> str:
    """First line of control ``queue_base``; "" when missing or empty."""
    ctl = f"{controldir}/queue_base"
    try:
        with open(ctl, "rb") as fh:
            first = fh.readline().rstrip(b" \t\r\n")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise Fatal(55, f"unable to read {ctl}: {exc.strerror}") from None
    return os.fsdecode(first)


_PATHS: Paths | None = None
_PLACES: Places | None = None


def get() -> Paths:
    """The process-wide Paths, built once at first use."""
    global _PATHS
    if _PATHS is None:
        _PATHS = load()
    return _PATHS


def places() -> Places:
    """The process-wide :class:`Places`, built once at first use."""
    global _PLACES
    if _PLACES is None:
        _PLACES = load_places()
    return _PLACES


def reload() -> Paths:
    """Rebuild the process-wide Paths after the environment changed
    (e.g. once the defaultqueue envdirs have been applied)."""
    global _PATHS, _PLACES
    _PATHS = load()
    _PLACES = None
    return _PATHS
