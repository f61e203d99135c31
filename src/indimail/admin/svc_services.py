"""Service directories made by svctool: SMTP, delivery, QMTP, QMQP, queues.

Each service is ``SERVICEDIR/<name>/`` with ``run``, ``log/run`` (multilog
into ``LOGDIR/<logname>``) and ``variables/``, an envdir whose ``.envdir``
names ``control/global_vars`` and whose ``.options`` keeps the svctool
command line that made it (admin.md §3).  Run scripts have the original's
command lines, with the commands' absolute paths taken from the paths
module, so one generator serves a packaged system and a rootless instance
(where the role options ``-u``/``-g``/``setuidgid`` are left out, since
every role is the invoking user).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal

# Defaults of the original (svctool / create_services).
MAXDAEMONS = 75
MAXPERIP = 25
MIN_FREE = 52428800
MSGQSIZE = 8388608
# softlimit -m caps the address space.  The original's 50 MB / 80 MB suit
# its C programs; a frozen Python process maps more (libpython, extension
# modules, thread stacks), so the defaults here leave it room.
SOFT_MEM_LISTENER = 536870912
SOFT_MEM_SEND = 536870912
RBL_DEFAULT = "-rzen.spamhaus.org -rdnsbl-1.uceprotect.net -rdnsbl.sorbs.net -rbl.spamcop.net"


def have_command(name: str) -> bool:
    """Whether this build has command ``name`` (looked up in the table)."""
    from indimail.cli import COMMANDS

    return name in COMMANDS


@dataclass
class Options:
    """Service options gathered from the svctool command line."""

    servicedir: Path
    qbase: Path
    qcount: int
    qstart: int
    command_line: str = ""
    localip: str = "0"
    maxdaemons: int = MAXDAEMONS
    maxperip: int = MAXPERIP
    memory: int = SOFT_MEM_LISTENER
    dmemory: int = SOFT_MEM_SEND
    min_free: int = MIN_FREE
    msgqsize: int = MSGQSIZE
    ssl: bool = False
    starttls: bool = False
    forcetls: bool = False
    authsmtp: bool = False
    forceauthsmtp: bool = False
    secureauth: bool = False
    chkrecipient: bool = False
    chkrelay: bool = False
    masquerade: bool = False
    antispoof: bool = False
    odmr: bool = False
    rbl: bool = False
    rbl_list: str = ""
    fsync: bool = False
    fdatasync: bool = False
    syncdir: bool = False
    skipsend: bool = False
    down: bool = False
    utf8: bool = False
    routes: str = ""
    servicetag: str = ""
    hidehost: bool = False
    nooverwrite: bool = False
    extra: dict[str, str | None] = field(default_factory=dict)


class Writer:
    """Writes files and directories, with owners when running as root."""

    def __init__(self, p: _paths.Paths) -> None:
        self.p = p
        self.as_root = os.geteuid() == 0 and not p.rootless

    def _uid(self, role: str | None) -> int:
        if role is None:
            return -1
        try:
            return pwd.getpwnam(self.p.user(role)).pw_uid
        except KeyError:
            name = self.p.user(role)
            raise Fatal(111, f"no such user: {name} (run svctool --config=users)") from None

    def _gid(self, role: str | None) -> int:
        if role is None:
            return -1
        try:
            return grp.getgrnam(self.p.group(role)).gr_gid
        except KeyError:
            name = self.p.group(role)
            raise Fatal(111, f"no such group: {name} (run svctool --config=users)") from None

    def chown(self, path: Path, user: str | None, group: str | None) -> None:
        if self.as_root and (user or group):
            os.chown(path, self._uid(user), self._gid(group))

    def mkdir(
        self, path: Path, mode: int = 0o755, user: str | None = None, group: str | None = None
    ) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.chown(path, user, group)
        os.chmod(path, mode)
        return path

    def write(
        self,
        path: Path,
        text: str,
        mode: int = 0o644,
        user: str | None = None,
        group: str | None = None,
    ) -> Path:
        """Write ``path`` atomically (temp file + rename)."""
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            self.chown(tmp, user, group)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise Fatal(111, f"unable to write {path}: {exc.strerror}") from None
        return path


def _var_text(value: str | None) -> str:
    """envdir file body: None unsets (empty file), '' sets empty, else value."""
    if value is None:
        return ""
    return value + "\n"


def bin_path(p: _paths.Paths, name: str) -> str:
    """Absolute path of command ``name`` (everything lives in BINDIR)."""
    return str(p.bindir / name)


def header(p: _paths.Paths, command_line: str, what: str = "run") -> str:
    host = socket.gethostname()
    stamp = time.strftime("%a %b %d %H:%M:%S %Z %Y")
    return (
        "#!/bin/sh\n"
        f"# generated {what} script for {host} at {stamp}\n"
        "# by the below command\n"
        f"# {command_line}\n\n"
    )


def log_run(p: _paths.Paths, logname: str, command_line: str) -> str:
    """``log/run``: multilog into LOGDIR/logname as qmaill (rootless: as is)."""
    text = header(p, command_line, "log")
    if p.rootless:
        return text + f"exec {bin_path(p, 'multilog')} t {p.logdir / logname}\n"
    return (
        text + f"exec {bin_path(p, 'setuidgid')} {p.user('qmaill')} \\\n"
        f"  {bin_path(p, 'multilog')} t {p.logdir / logname}\n"
    )


def global_vars(w: Writer, o: Options) -> Path:
    """control/global_vars: the envdir every service's variables/ links to."""
    p = w.p
    gv = w.mkdir(p.controldir / "global_vars", 0o755, "root", "qmail")
    defaults: dict[str, str | None] = {
        "CONFSPLIT": str(p.conf_split),
        "BIGTODO": str(p.bigtodo),
        "USE_FSYNC": "1" if o.fsync else None,
        "USE_FDATASYNC": "1" if o.fdatasync else None,
        "USE_SYNCDIR": "1" if o.syncdir else None,
    }
    for name, value in defaults.items():
        target = gv / name
        if name in ("CONFSPLIT", "BIGTODO") and target.exists():
            continue
        w.write(target, _var_text(value), 0o644, "root", "qmail")
    for name, ctl in (("DEFAULT_DOMAIN", "defaultdomain"), ("QMAILDEFAULTHOST", "defaulthost")):
        link = gv / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(f"../{ctl}")
    return gv


def write_service(
    w: Writer,
    o: Options,
    name: str,
    logname: str,
    run_text: str,
    variables: dict[str, str | None],
) -> Path:
    """Create SERVICEDIR/name with run, log/run and variables/."""
    p = w.p
    sdir = o.servicedir / name
    if o.nooverwrite and (sdir / "variables").is_dir():
        return sdir
    w.mkdir(o.servicedir, 0o755)
    w.mkdir(sdir, 0o755)
    w.mkdir(sdir / "log", 0o755)
    if o.down:
        (sdir / "down").touch()
    gv = global_vars(w, o)
    vdir = sdir / "variables"
    vdir.mkdir(exist_ok=True)
    os.chmod(vdir, 0o750)
    w.write(vdir / ".envdir", f"{gv}\n", 0o644, "root", "indimail")
    w.write(vdir / ".options", o.command_line + "\n", 0o644, "root", "indimail")
    for var, value in sorted(variables.items()):
        w.write(vdir / var, _var_text(value), 0o644, "root", "indimail")
    w.chown(vdir, "root", "indimail")
    os.chmod(vdir, 0o550 if w.as_root else 0o750)
    w.write(sdir / "run", run_text, 0o755)
    w.mkdir(p.logdir, 0o755, "qmaill", "nofiles")
    w.mkdir(p.logdir / logname, 0o755, "qmaill", "nofiles")
    w.write(sdir / "log" / "run", log_run(p, logname, o.command_line), 0o755)
    return sdir


def _queue_vars(o: Options) -> dict[str, str | None]:
    return {
        "QUEUE_BASE": str(o.qbase),
        "QUEUE_COUNT": str(o.qcount),
        "QUEUE_START": str(o.qstart),
    }


def _sync_vars(o: Options) -> dict[str, str | None]:
    return {
        "USE_FSYNC": "1" if o.fsync else None,
        "USE_FDATASYNC": "1" if o.fdatasync else None,
        "USE_SYNCDIR": "1" if o.syncdir else None,
    }


def _path_var(p: _paths.Paths) -> str:
    if str(p.bindir) == "/usr/bin":
        return "/bin:/usr/bin:/usr/sbin:/sbin"
    return f"/bin:/usr/bin:{p.bindir}:{p.sbindir}"


def _role_opts(p: _paths.Paths, user: str, groups: list[str]) -> str:
    if p.rootless:
        return ""
    return f"-u {p.user(user)} -g {','.join(p.group(g) for g in groups)} "


def smtp_service(w: Writer, o: Options, port: int) -> Path:
    """qmail-smtpd.PORT (and qmail-send.25 for port 25 unless --skipsend)."""
    p = w.p
    tag = o.servicetag or str(port)
    auth = o.authsmtp or o.forceauthsmtp
    authmodules = " ".join(bin_path(p, m) for m in ("sys-checkpwd", "vchkpass") if have_command(m))
    rbl_cmd: str | None = None
    if o.rbl:
        if have_command("rblsmtpd"):
            rbl_cmd = f"{bin_path(p, 'rblsmtpd')} {o.rbl_list or RBL_DEFAULT}"
        else:
            rbl_cmd = None  # rblsmtpd is not in this build: listen without it
    variables: dict[str, str | None] = {
        "LOCALIP": o.localip,
        "PORT": str(port),
        "MAXDAEMONS": str(o.maxdaemons),
        "MAXPERIP": str(o.maxperip),
        "CONTROLDIR": str(p.controldir),
        "SOFT_MEM": str(o.memory),
        "MIN_FREE": str(o.min_free),
        "PATH": _path_var(p),
        "QMAILQUEUE": bin_path(p, "qmail-multi"),
        "QUEUEDIR": None,
        "ENVHEADERS": "",
        "RBLCOMMAND": rbl_cmd,
        "AUTHMODULES": authmodules if auth else None,
        "DISABLE_VRFY": None if auth else "",
        "HIDE_HOST": "1" if o.hidehost else None,
        "STRIP_DOMAIN": "1",
        "LOGFILTER": None,
        "DISABLE_PLUGIN": "",
        **_queue_vars(o),
        **_sync_vars(o),
    }
    switches = (
        (o.ssl, "SMTPS", ""),
        (o.starttls, "STARTTLS", ""),
        (o.ssl or o.starttls, "CERTDIR", str(p.certdir)),
        (o.forcetls, "FORCE_TLS", ""),
        (o.chkrecipient, "CHECKRECIPIENT", "1"),
        (o.masquerade, "MASQUERADE", ""),
        (o.antispoof, "ANTISPOOFING", ""),
        (o.secureauth, "SECURE_AUTH", "1"),
        (o.forceauthsmtp, "REQUIREAUTH", ""),
        (o.chkrelay, "CHECKRELAY", ""),
        (o.odmr, "ODMR", ""),
        (o.utf8, "UTF8", ""),
    )
    variables.update({name: value for on, name, value in switches if on})
    variables.update(o.extra)

    smtpd = bin_path(p, "qmail-smtpd")
    tail = f'{smtpd} $HOSTNAME \\$AUTHMODULES /bin/false"' if auth else f'{smtpd}"'
    hflag = "-h" if rbl_cmd else "-H"
    run = header(p, o.command_line) + (
        f"CONTROLDIR={p.controldir}\n"
        "HOSTNAME=$(uname -n)\n"
        'if [ ! -s "$CONTROLDIR/me" ] ; then\n'
        '    echo "No $CONTROLDIR/me: run svctool --config=qmail"\n'
        "    sleep 5\n"
        "    exit 1\n"
        "fi\n"
        'if [ ! -f "$CONTROLDIR/rcpthosts" ] ; then\n'
        '    echo "No $CONTROLDIR/rcpthosts!"\n'
        '    echo "Refusing to start SMTP listener because it\'ll create an open relay"\n'
        "    sleep 5\n"
        "    exit 1\n"
        "fi\n\n"
        "exec 2>&1\n"
        f'exec {bin_path(p, "envdir")} variables sh -c "\n'
        f"exec {bin_path(p, 'softlimit')} -m \\$SOFT_MEM -o 1024 \\\n"
        f"{bin_path(p, 'tcpserver')} -v {hflag} -R -l $HOSTNAME \\\n"
        f"-x {p.sysconfdir}/tcp/tcp.smtp.cdb \\\n"
        "-c ./variables/MAXDAEMONS -o -b \\$MAXDAEMONS \\\n"
        f"{_role_opts(p, 'qmaild', ['qmail', 'indimail'])}\\$LOCALIP \\$PORT \\$RBLCOMMAND \\\n"
        f"{tail}\n"
    )
    sdir = write_service(w, o, f"qmail-smtpd.{tag}", f"smtpd.{tag}", run, variables)
    if port == 25 and not o.skipsend:
        send_service(w, o, "25")
    return sdir


def make_queues(w: Writer, o: Options) -> list[Path]:
    """nqueue and queue<START..START+COUNT-1> under QUEUE_BASE, via queue-fix."""
    from indimail.queue.queue_fix import create_queue

    p = w.p
    w.mkdir(o.qbase, 0o755, "root", "qmail")
    made = []
    for q in [o.qbase / "nqueue"] + [
        o.qbase / f"queue{n}" for n in range(o.qstart, o.qstart + o.qcount)
    ]:
        if o.nooverwrite and q.is_dir():
            continue
        q.mkdir(exist_ok=True)
        create_queue(q, p, bigtodo=0)
        made.append(q)
    w.mkdir(p.controldir, 0o755)
    w.write(p.controldir / "queue_base", f"{o.qbase}\n", 0o644)
    return made


def send_service(w: Writer, o: Options, ident: str = "25") -> Path:
    """qmail-send.IDENT: qscheduler over QUEUE_COUNT queues (queues made here)."""
    p = w.p
    tag = o.servicetag if o.servicetag and ident != "25" else ident
    make_queues(w, o)
    variables: dict[str, str | None] = {
        "QMAILQUEUE": bin_path(p, "qmail-multi"),
        "QUEUEDIR": None,
        "MIN_FREE": str(o.min_free),
        "MSGQSIZE": str(o.msgqsize),
        "PATH": _path_var(p),
        "CERTDIR": str(p.certdir),
        "USE_SETGROUPS": None,
        "UTF8": "1" if o.utf8 else None,
        "ROUTES": o.routes or None,
        "DISABLE_CNAME_LOOKUP": "1",
        "SETUSER_PRIVILEGES": None,
        "SANITIZE_ENV": None,
        "CONTROLDIR": str(p.controldir),
        "MAILCOUNT_LIMIT": None,
        "MAILSIZE_LIMIT": None,
        "DOMAIN_LIMITS": None,
        "FAST_QUOTA": None,
        "MAILDIRSIZE_MAX_SIZE": "8192",
        "MAILDIRSIZE_MAX_AGE": "43200",
        "OVERQUOTA_MAILSIZE": None,
        "SOFT_MEM": str(o.dmemory),
        "ROUTE_NULL_USER": None,
        "AUTHSELF": None,
        "AUTH_SMTP": None,
        "QMAILLOCAL": None,
        "QMAILREMOTE": None,
        "LOGLOCK": "",
        "HIDE_HOST": "1" if o.hidehost else None,
        **_queue_vars(o),
        **_sync_vars(o),
    }
    run = header(p, o.command_line) + (
        "exec 2>&1\n"
        "if [ -s variables/CONTROLDIR ] ; then\n"
        "  cntrl_dir=$(head -n 1 variables/CONTROLDIR)\n"
        "else\n"
        f"  cntrl_dir={p.controldir}\n"
        "fi\n"
        "if [ -s $cntrl_dir/defaultdelivery ] ; then\n"
        "  DEFAULTDELIVERY=$(head -n 1 $cntrl_dir/defaultdelivery)\n"
        "else\n"
        '  DEFAULTDELIVERY="./Maildir/"\n'
        "fi\n"
        "export DEFAULTDELIVERY\n"
        f'exec {bin_path(p, "envdir")} variables sh -c "\n'
        f"exec {bin_path(p, 'softlimit')} -q \\$MSGQSIZE -m \\$SOFT_MEM -o 1024 \\\n"
        f'{bin_path(p, "qscheduler")} -s \\"\\$DEFAULTDELIVERY\\""\n'
    )
    return write_service(w, o, f"qmail-send.{tag}", f"deliver.{tag}", run, variables)


def qmtp_qmqp_service(w: Writer, o: Options, kind: str, port: int) -> Path:
    """qmail-qmtpd.PORT or qmail-qmqpd.PORT under tcpserver."""
    p = w.p
    if kind not in ("qmtpd", "qmqpd"):
        raise Fatal(100, f"unknown service type {kind}")
    tag = o.servicetag or str(port)
    rules = "tcp.qmtp.cdb" if kind == "qmtpd" else "tcp.qmqp.cdb"
    variables: dict[str, str | None] = {
        "LOCALIP": o.localip,
        "PORT": str(port),
        "MAXDAEMONS": str(o.maxdaemons),
        "MAXPERIP": str(o.maxperip),
        "CONTROLDIR": str(p.controldir),
        "SOFT_MEM": str(o.memory),
        "MIN_FREE": str(o.min_free),
        "PATH": _path_var(p),
        "QMAILQUEUE": bin_path(p, "qmail-multi"),
        "QUEUEDIR": None,
        "LOGFILTER": None,
        **_queue_vars(o),
        **_sync_vars(o),
    }
    if kind == "qmtpd" and o.hidehost:
        variables["HIDE_HOST"] = "1"
    variables.update(o.extra)
    run = header(p, o.command_line) + (
        f"CONTROLDIR={p.controldir}\n"
        "HOSTNAME=$(uname -n)\n"
        'if [ ! -s "$CONTROLDIR/me" ] ; then\n'
        '    echo "No $CONTROLDIR/me: run svctool --config=qmail"\n'
        "    sleep 5\n"
        "    exit 1\n"
        "fi\n\n"
        "exec 2>&1\n"
        f'exec {bin_path(p, "envdir")} variables sh -c "\n'
        f"exec {bin_path(p, 'softlimit')} -m \\$SOFT_MEM -o 1024 \\\n"
        f"{bin_path(p, 'tcpserver')} -v -H -R -l $HOSTNAME \\\n"
        f"-x {p.sysconfdir}/tcp/{rules} \\\n"
        "-c ./variables/MAXDAEMONS -o -b \\$MAXDAEMONS \\\n"
        f"{_role_opts(p, 'qmaild', ['qmail'])}\\$LOCALIP \\$PORT \\\n"
        f'{bin_path(p, "qmail-" + kind)}"\n'
    )
    return write_service(w, o, f"qmail-{kind}.{tag}", f"{kind}.{tag}", run, variables)


def queued_service(w: Writer, o: Options) -> Path:
    """qmail-queued: the queue's door for qmail-smtpd (qmaild), bounces
    (qmails) and users' sendmail; started as root, it becomes qmailq."""
    p = w.p
    variables: dict[str, str | None] = {
        "MAXDAEMONS": str(o.maxdaemons),
        "SOFT_MEM": str(o.memory),
        "MIN_FREE": str(o.min_free),
        "CONTROLDIR": str(p.controldir),
        "PATH": _path_var(p),
        "HIDE_HOST": "1" if o.hidehost else None,
        **_queue_vars(o),
        **_sync_vars(o),
    }
    variables.update(o.extra)
    run = header(p, o.command_line) + (
        "exec 2>&1\n"
        f'exec {bin_path(p, "envdir")} variables sh -c "\n'
        f"exec {bin_path(p, 'softlimit')} -m \\$SOFT_MEM -o 1024 \\\n"
        f'{bin_path(p, "qmail-queued")} -c \\$MAXDAEMONS"\n'
    )
    return write_service(w, o, "qmail-queued", "queued", run, variables)


def queue_param(w: Writer, o: Options, name: str = "defaultqueue") -> Path:
    """control/<name>/: the envdir read by inject, sendmail, qmail-qread..."""
    p = w.p
    qdir = w.mkdir(p.controldir / name, 0o755, "root", "qmail")
    variables: dict[str, str | None] = {
        **_queue_vars(o),
        "QMAILQUEUE": bin_path(p, "qmail-multi"),
        "MIN_FREE": str(o.min_free),
        "ERROR_FD": None,
        "DKIMQUEUE": None,
        **_sync_vars(o),
    }
    variables.update(o.extra)
    for var, value in sorted(variables.items()):
        w.write(qdir / var, _var_text(value), 0o644, "root", "qmail")
    w.write(qdir / ".options", o.command_line + "\n", 0o644, "root", "qmail")
    return qdir


def svscan_log(w: Writer, o: Options) -> Path:
    """SERVICEDIR/.svscan/log: multilog of svscan's own output (LOGDIR/svscan)."""
    p = w.p
    sdir = w.mkdir(o.servicedir / ".svscan", 0o755)
    w.mkdir(sdir / "log", 0o755)
    vdir = w.mkdir(sdir / "variables", 0o755)
    w.write(vdir / "SCANLOG", "\n", 0o644)
    w.write(vdir / ".options", o.command_line + "\n", 0o644)
    w.mkdir(p.logdir, 0o755, "qmaill", "nofiles")
    w.mkdir(p.logdir / "svscan", 0o755, "qmaill", "nofiles")
    w.write(sdir / "log" / "run", log_run(p, "svscan", o.command_line), 0o755)
    return sdir


def service_names(servicedir: Path) -> list[str]:
    """Services (not dot entries) in ``servicedir``."""
    try:
        return sorted(
            e.name
            for e in os.scandir(servicedir)
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)
        )
    except FileNotFoundError:
        return []


def remove_service(servicedir: Path, name: str) -> None:
    """Take a service away: down first, then remove it from the scan dir."""
    sdir = servicedir / name
    if not sdir.exists():
        raise Fatal(100, f"no service {sdir}")
    (sdir / "down").touch()
    shutil.rmtree(sdir)


def quote_command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
