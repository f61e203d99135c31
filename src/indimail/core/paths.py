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
from pathlib import Path

from indimail.core.errors import Fatal
from indimail.core.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms)
if TYPE_CHECKING:
    from collections.abc import Mapping

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


def parse_paths_file(path: Path) -> dict[str, str]:
    """Read ``KEY=value`` lines; ``#`` comments and blank lines are skipped.

    A line that is not ``KEY=value`` is an error naming the file and line,
    since silently ignoring it would put mail in the wrong place.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
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


def _candidate_files(environ: Mapping[str, str], argv0: str | None) -> list[Path]:
    explicit = environ.get("INDIMAIL_PATHS")
    if explicit:
        return [Path(explicit)]
    found: list[Path] = []
    if argv0 and os.sep in argv0:
        found.append(Path(os.path.abspath(argv0)).parent.parent / PATHS_FILE)
    if getattr(sys, "frozen", False):
        found.append(Path(sys.executable).resolve().parent / PATHS_FILE)
    else:
        found.append(Path(__file__).resolve().parent.parent / PATHS_FILE)
    return found


def _int(values: Mapping[str, str], key: str, default: int, where: str) -> int:
    raw = values.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise Fatal(111, f"{key}={raw!r} is not a number ({where})") from None


class Paths(Record):
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

    def user(self, role: str) -> str:
        """Account name for ``role`` (e.g. ``qmailq``)."""
        return self.users.get(role, role)

    def group(self, role: str) -> str:
        """Group name for ``role`` (e.g. ``qmail``)."""
        return self.groups.get(role, role)

    @property
    def queue_base(self) -> Path:
        """QUEUE_BASE: env/file, else control ``queue_base``, else QMAILHOME/queue."""
        if self.queue_base_env is not None:
            return self.queue_base_env
        ctl = self.controldir / "queue_base"
        try:
            with open(ctl, "rb") as fh:
                first = fh.readline().rstrip(b" \t\r\n")
        except FileNotFoundError:
            first = b""
        except OSError as exc:
            raise Fatal(55, f"unable to read {ctl}: {exc.strerror}") from None
        if first:
            return Path(os.fsdecode(first))
        return self.qmailhome / "queue"

    def queue_dirs(self) -> list[Path]:
        """Every queue ``QUEUE_BASE/queue<n>`` for n in START..START+COUNT-1."""
        base = self.queue_base
        return [
            base / f"queue{n}" for n in range(self.queue_start, self.queue_start + self.queue_count)
        ]


def load(
    environ: Mapping[str, str] | None = None, argv0: str | None = None, platform: str | None = None
) -> Paths:
    """Build the Paths object from defaults, the paths file and ``environ``."""
    if environ is None:
        environ = os.environ
    if argv0 is None and sys.argv:
        argv0 = sys.argv[0]
    values = platform_defaults(platform)
    source = None
    for candidate in _candidate_files(environ, argv0):
        if candidate.is_file():
            values.update(parse_paths_file(candidate))
            source = candidate
            break
        if environ.get("INDIMAIL_PATHS"):
            raise Fatal(111, f"paths file {candidate} (INDIMAIL_PATHS) does not exist")
    for key in KEYS:
        if environ.get(key):
            values[key] = environ[key]
    where = str(source) if source else "environment"

    def p(key: str, default: str) -> Path:
        return Path(values.get(key) or default)

    prefix = p("PREFIX", "/usr")
    sysconfdir = p("SYSCONFDIR", "/etc/indimail")
    qmailhome = p("QMAILHOME", "/var/indimail")
    users = {role: values.get(f"USER_{role.upper()}", role) for role in USER_ROLES}
    groups = {role: values.get(f"GROUP_{role.upper()}", role) for role in GROUP_ROLES}
    split = _int(values, "CONFSPLIT", DIRSPLIT, where)
    if split < 1:
        raise Fatal(111, f"CONFSPLIT={split} must be at least 1 ({where})")
    return Paths(
        prefix=prefix,
        bindir=p("BINDIR", str(prefix / "bin")),
        sbindir=p("SBINDIR", str(prefix / "sbin")),
        qmailhome=qmailhome,
        sysconfdir=sysconfdir,
        controldir=p("CONTROLDIR", str(sysconfdir / "control")),
        shareddir=p("SHAREDDIR", "/usr/share/indimail"),
        libexecdir=p("LIBEXECDIR", "/usr/libexec/indimail"),
        servicedir=p("SERVICEDIR", "/service"),
        logdir=p("LOGDIR", "/var/log/svc"),
        rundir=p("RUNDIR", "/run"),
        queue_base_env=Path(values["QUEUE_BASE"]) if values.get("QUEUE_BASE") else None,
        queue_count=_int(values, "QUEUE_COUNT", 5, where),
        queue_start=_int(values, "QUEUE_START", 1, where),
        assigndir=p("ASSIGNDIR", str(sysconfdir / "users")),
        certdir=p("CERTDIR", str(sysconfdir / "certs")),
        plugindir=p("PLUGINDIR", str(prefix / "lib/indimail/plugins")),
        conf_split=min(split, DIRSPLIT),
        bigtodo=_int(values, "BIGTODO", 0, where),
        users=users,
        groups=groups,
        source=source,
        rootless=values.get("ROOTLESS", "") not in ("", "0"),
    )


_PATHS: Paths | None = None


def get() -> Paths:
    """The process-wide Paths, built once at first use."""
    global _PATHS
    if _PATHS is None:
        _PATHS = load()
    return _PATHS


def reload() -> Paths:
    """Rebuild the process-wide Paths after the environment changed
    (e.g. once the defaultqueue envdirs have been applied)."""
    global _PATHS
    _PATHS = load()
    return _PATHS
