"""svctool's ``--config=`` verbs: users, qmail controls, boot, alternatives.

* ``users``      groups and users of admin.md §2 (groupadd/useradd on Linux,
                 pw on FreeBSD, dscl on macOS); ids from :data:`GROUPS` /
                 :data:`USERS` where the platform needs them, the package
                 id 555 for indimail everywhere.
* ``qmail``      control files from the host name (admin.md §5), only those
                 missing; users/assign + qmail-newu; tcp rules + cdbs.
* ``add-boot`` / ``rm-boot``   svscan at boot (systemd, SysV/LSB, OpenRC,
                 FreeBSD rc.d, macOS launchd), see :mod:`svc_boot`.
* ``add-alt`` / ``rm-alt``     the MTA switch: update-alternatives ``mta``,
                 BSD mailwrapper's mailer.conf, else plain symlinks.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from indimail.admin import svc_boot
from indimail.admin.instance import control_defaults, default_fqdn, make_maildir
from indimail.admin.svc_services import Writer, bin_path, have_command
from indimail.core import paths as _paths
from indimail.core.errors import Fatal

# name -> id used where a fixed id is wanted (macOS, FreeBSD; indimail everywhere)
GROUPS: dict[str, int] = {
    "indimail": 555,
    "qmail": 556,
    "nofiles": 557,
    "qscand": 558,
    "qcerts": 559,
}
# name -> (id, primary group, supplementary groups, home relative to a base)
# base: "Q" QMAILHOME, "L" LOGDIR
USERS: dict[str, tuple[int, str, tuple[str, ...], str]] = {
    "indimail": (555, "indimail", (), "Q"),
    "alias": (556, "nofiles", (), "Q/alias"),
    "qmaild": (557, "nofiles", ("qcerts",), "Q"),
    "qmaill": (558, "nofiles", (), "L"),
    "qmailp": (559, "nofiles", (), "Q"),
    "qmailq": (560, "qmail", (), "Q"),
    "qmailr": (561, "qmail", ("qcerts",), "Q"),
    "qmails": (562, "qmail", ("qcerts",), "Q"),
    "qscand": (563, "qscand", ("qmail",), "Q/qscanq"),
}
FIXED_ON_LINUX = ("indimail",)

SERVER_CIPHERS = (
    "ALL:!aNULL:!ADH:!eNULL:!LOW:!EXP:!NULL:!RC4:!PSK:!SRP:!DSS:!DES:!3DES:!SHA1:!SHA256:!SHA384"
)
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
CLIENT_CIPHERS = "ALL:!aNULL:!ADH:!eNULL:!LOW:!DH:!EXP"
NODNSCHECK_DOMAINS = ("gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com")
TCP_SMTP_SAMPLE = """\
# tcpserver rules for SMTP: edit, then run "qmailctl cdb"
# Allow relaying from this host:
#127.:allow,RELAYCLIENT=""
# Greylist a network (needs the greylist service):
#10.0.0.:allow,GREYIP="127.0.0.1@1999"
# Skip the RBL checks for a network:
#192.168.1.:allow,RBLSMTPD=""
"""


def _home(p: _paths.Paths, rel: str) -> Path:
    base, _, sub = rel.partition("/")
    root = p.logdir if base == "L" else p.qmailhome
    return root / sub if sub else root


def nologin() -> str:
    for sh in ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/false", "/bin/false"):
        if os.path.exists(sh):
            return sh
    return "/bin/false"


def _run(cmd: list[str], log: list[str]) -> int:
    log.append("+ " + " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        log.append(f"  exit {res.returncode}: {res.stderr.strip()}")
    return res.returncode


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _gid_free(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return False
    except KeyError:
        return True


def _uid_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        return True


def create_users(p: _paths.Paths, platform: str | None = None) -> list[str]:
    """Create the groups and users that are missing; return a log."""
    log: list[str] = []
    if p.rootless:
        log.append("rootless instance: every role is the invoking user, nothing to create")
        return log
    if os.geteuid() != 0:
        raise Fatal(111, "--config=users needs root")
    platform = platform or sys.platform
    shell = nologin()
    for name, gid in GROUPS.items():
        if _group_exists(name):
            continue
        if platform.startswith("darwin"):
            _run(["dscl", ".", "-create", f"/Groups/{name}", "PrimaryGroupID", str(gid)], log)
        elif platform.startswith("freebsd"):
            _run(["pw", "groupadd", name, "-g", str(gid)], log)
        else:
            cmd = ["groupadd", "-r"]
            if name in FIXED_ON_LINUX and _gid_free(gid):
                cmd += ["-g", str(gid)]
            _run([*cmd, name], log)
    for name, (uid, group, extra, home) in USERS.items():
        if _user_exists(name):
            continue
        hdir = str(_home(p, home))
        ushell = "/bin/sh" if name == "indimail" else shell
        if platform.startswith("darwin"):
            rec = f"/Users/{name}"
            gid = str(GROUPS[group])
            for key, val in (
                ("UniqueID", str(uid)),
                ("PrimaryGroupID", gid),
                ("NFSHomeDirectory", hdir),
                ("UserShell", ushell),
                ("RealName", f"indimail-mta {name}"),
            ):
                _run(["dscl", ".", "-create", rec, key, val], log)
            for g in extra:
                _run(["dscl", ".", "-append", f"/Groups/{g}", "GroupMembership", name], log)
        elif platform.startswith("freebsd"):
            cmd = ["pw", "useradd", name, "-u", str(uid), "-g", group, "-d", hdir, "-s", ushell]
            if extra:
                cmd += ["-G", ",".join(extra)]
            _run([*cmd, "-c", f"indimail-mta {name}"], log)
        else:
            cmd = ["useradd", "-r", "-M", "-g", group, "-d", hdir, "-s", ushell]
            cmd += ["-c", f"indimail-mta {name}"]
            if extra:
                cmd += ["-G", ",".join(extra)]
            if name in FIXED_ON_LINUX and _uid_free(uid):
                cmd += ["-u", str(uid)]
            _run([*cmd, name], log)
    return log


def remove_users(p: _paths.Paths, platform: str | None = None) -> list[str]:
    """Remove the users, then the groups (``--config=rmusers``)."""
    log: list[str] = []
    if p.rootless:
        return log
    platform = platform or sys.platform
    for name in USERS:
        if not _user_exists(name):
            continue
        if platform.startswith("darwin"):
            _run(["dscl", ".", "-delete", f"/Users/{name}"], log)
        elif platform.startswith("freebsd"):
            _run(["pw", "userdel", name], log)
        else:
            _run(["userdel", name], log)
    for name in GROUPS:
        if not _group_exists(name):
            continue
        if platform.startswith("darwin"):
            _run(["dscl", ".", "-delete", f"/Groups/{name}"], log)
        elif platform.startswith("freebsd"):
            _run(["pw", "groupdel", name], log)
        else:
            _run(["groupdel", name], log)
    return log


def host_ip() -> str:
    """First non-loopback IPv4 address of the host, else 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        ip = s.getsockname()[0]
        if not ip.startswith("127."):
            return ip
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ip = str(info[4][0])
            if not ip.startswith("127."):
                return ip
    return "127.0.0.1"


def control_files(p: _paths.Paths, fqdn: str, postmaster: str | None) -> dict[str, str]:
    """Every control file --config=qmail writes (when missing)."""
    values = control_defaults(fqdn, p.queue_base)
    default_domain = values["defaultdomain"]
    virtual = p.controldir / "virtualdomains"
    with contextlib.suppress(OSError):
        if any(ln.split(":")[0] == fqdn for ln in virtual.read_text().splitlines()):
            values.pop("locals")
    values.update(
        {
            "servicedir.conf": str(p.servicedir),
            "nodnscheck": "\n".join([*(f"@{d}" for d in NODNSCHECK_DOMAINS), f"@{fqdn}"]),
            "hostip": host_ip(),
            "chkrcptdomains": default_domain,
            "chksenderdomains": default_domain,
            "dnsbllist": "zen.spamhaus.org",
            "servercipherlist": SERVER_CIPHERS,
            "serverciphersuite": TLS13_SUITES,
            "clientciphersuite": TLS13_SUITES,
            "clientcipherlist": CLIENT_CIPHERS,
            "tlsservermethod": "TLSv1_3",
            "tlsclientmethod": "TLSv1_3",
        }
    )
    if postmaster:
        values["postmaster"] = postmaster  # not a control: handled below
    return values


def tcprules_compile(rules: Path, cdb: Path) -> None:
    """Build ``cdb`` from ``rules``: with tcprules when this build has it,
    else here for plain rules (address prefixes, no ranges)."""
    if have_command("tcprules"):
        from indimail.cli import run as _run_cmd

        tmp = cdb.with_name(cdb.name + ".tmp")
        pid = os.fork()
        if pid == 0:
            code = 111
            try:
                fd = os.open(rules, os.O_RDONLY)
                os.dup2(fd, 0)
                code = _run_cmd("tcprules", ["tcprules", str(cdb), str(tmp)])
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise Fatal(111, f"tcprules failed on {rules}")
        return
    from indimail.core import cdb as _cdb

    records: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for lineno, raw in enumerate(rules.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        addr, sep, rest = line.partition(":")
        if not sep or "-" in addr or "/" in addr:
            raise Fatal(111, f"{rules}:{lineno}: unsupported rule without tcprules: {raw!r}")
        action, _, envs = rest.partition(",")
        action = action.strip()
        if action not in ("allow", "deny"):
            raise Fatal(111, f"{rules}:{lineno}: expected allow or deny: {raw!r}")
        data = b"" if action == "allow" else b"D"  # as ucspi-tcp's tcprules
        for env in filter(None, (e.strip() for e in envs.split(","))):
            name, eq, value = env.partition("=")
            if not eq:
                raise Fatal(111, f"{rules}:{lineno}: bad variable {env!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            data += f"+{name.strip()}={value}".encode() + b"\0"
        key = addr.strip().encode()
        if key in seen:
            continue
        seen.add(key)
        records.append((key, data))
    _cdb.make_from_pairs(cdb, cdb.with_name(cdb.name + ".tmp"), records)


def qmail_config(w: Writer, fqdn: str | None = None, postmaster: str | None = None) -> list[Path]:
    """--config=qmail: control files, assign + cdb, tcp rules, alias tree."""
    p = w.p
    fqdn = (fqdn or default_fqdn()).lower()
    made: list[Path] = []
    for d in (p.sysconfdir, p.controldir, p.assigndir, p.sysconfdir / "tcp", p.certdir):
        w.mkdir(d, 0o755)
    values = control_files(p, fqdn, postmaster)
    pm = values.pop("postmaster", None)
    for name, value in values.items():
        target = p.controldir / name
        if not target.exists():
            made.append(w.write(target, value + "\n", 0o644))
    # alias user's home and the .qmail files for postmaster, mailer-daemon, root
    alias = p.qmailhome / "alias"
    w.mkdir(p.qmailhome, 0o755)
    w.mkdir(alias, 0o2755, "alias", "qmail")
    target = pm or "./Maildir/"
    if target.startswith(str(alias)):
        target = "./" + os.path.relpath(target.rstrip("/"), alias) + "/"
    if target.startswith("./") and target.endswith("/"):
        maildir = alias / target[2:]
        make_maildir(maildir)
        for sub in ("", "cur", "new", "tmp"):
            w.chown(maildir / sub, "alias", "nofiles")
    for name in ("postmaster", "mailer-daemon", "root"):
        dot = alias / f".qmail-{name}"
        if not dot.exists():
            made.append(w.write(dot, target + "\n", 0o644, "alias", "nofiles"))
    assign = p.assigndir / "assign"
    if not assign.exists():
        made.append(w.write(assign, ".\n", 0o644))
    from indimail.deliver.qmail_newu import build

    build(p.assigndir)
    tcp = p.sysconfdir / "tcp"
    for name, text in (
        ("tcp.smtp", TCP_SMTP_SAMPLE),
        ("tcp.qmtp", ":deny\n"),
        ("tcp.qmqp", ":deny\n"),
    ):
        rules = tcp / name
        if not rules.exists():
            made.append(w.write(rules, text, 0o644))
        cdb = tcp / f"{name}.cdb"
        if not cdb.exists():
            tcprules_compile(rules, cdb)
            with contextlib.suppress(OSError):
                os.chmod(cdb, 0o664)
    return made


# --- boot -----------------------------------------------------------------


def _detect_boot(root: Path, platform: str) -> str:
    if platform.startswith("darwin"):
        return "launchd"
    if platform.startswith("freebsd"):
        return "rcd"
    if (root / "run/systemd/system").is_dir() and shutil.which("systemctl"):
        return "systemd"
    if (root / "sbin/openrc-run").exists():
        return "openrc"
    return "sysv"


def _unit_dir(root: Path) -> Path:
    for d in ("lib/systemd/system", "usr/lib/systemd/system"):
        if (root / d).is_dir():
            return root / d
    return root / "lib/systemd/system"


def add_boot(
    w: Writer, destdir: Path | None = None, method: str | None = None, platform: str | None = None
) -> list[str]:
    """Install svscanboot and the boot file of this system's init; enable it."""
    p = w.p
    root = destdir or Path("/")
    platform = platform or sys.platform
    method = method or _detect_boot(root, platform)
    files = svc_boot.boot_files(p)
    log: list[str] = []

    def put(path: Path, key: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        text, mode = files[key]
        w.write(path, text, mode)
        log.append(f"wrote {path}")
        return path

    def under(path: Path) -> Path:
        return root / str(path).lstrip("/")

    boot = under(p.shareddir / "boot")
    for key in files:
        put(boot / key, key)
    put(under(p.libexecdir / "svscanboot"), "svscanboot")
    w.mkdir(under(p.servicedir), 0o755)
    live = destdir is None and os.geteuid() == 0 and not p.rootless
    if method == "systemd":
        put(_unit_dir(root) / svc_boot.UNIT, "systemd")
        if live:
            _run(["systemctl", "daemon-reload"], log)
            _run(["systemctl", "enable", svc_boot.UNIT], log)
    elif method == "openrc":
        put(root / "etc/init.d/svscan", "openrc")
        if live:
            _run(["rc-update", "add", "svscan", "default"], log)
    elif method == "rcd":
        put(under(p.prefix / "etc/rc.d/svscan"), "svscan.rcd")
        if live:
            _run(["sysrc", "svscan_enable=YES"], log)
    elif method == "launchd":
        put(root / "Library/LaunchDaemons" / f"{svc_boot.LAUNCHD_LABEL}.plist", "svscan.plist")
        if live:
            plist = f"/Library/LaunchDaemons/{svc_boot.LAUNCHD_LABEL}.plist"
            _run(["launchctl", "load", "-w", plist], log)
    elif method == "sysv":
        put(root / "etc/init.d/svscan", "svscan.init")
        if live:
            if shutil.which("update-rc.d"):
                _run(["update-rc.d", "svscan", "defaults"], log)
            elif shutil.which("chkconfig"):
                _run(["chkconfig", "--add", "svscan"], log)
    elif method != "none":
        raise Fatal(100, f"unknown boot method {method}")
    return log


def rm_boot(w: Writer, destdir: Path | None = None, platform: str | None = None) -> list[str]:
    """Stop svscan at boot and remove the boot files add_boot wrote."""
    p = w.p
    root = destdir or Path("/")
    platform = platform or sys.platform
    live = destdir is None and os.geteuid() == 0 and not p.rootless
    log: list[str] = []
    unit = _unit_dir(root) / svc_boot.UNIT
    if unit.exists():
        if live:
            _run(["systemctl", "disable", "--now", svc_boot.UNIT], log)
        unit.unlink()
        if live:
            _run(["systemctl", "daemon-reload"], log)
    init = root / "etc/init.d/svscan"
    if init.exists():
        if live:
            _run([str(init), "stop"], log)
            if shutil.which("update-rc.d"):
                _run(["update-rc.d", "-f", "svscan", "remove"], log)
            elif shutil.which("rc-update"):
                _run(["rc-update", "del", "svscan", "default"], log)
        init.unlink()
    rcd = root / str(p.prefix / "etc/rc.d/svscan").lstrip("/")
    if rcd.exists():
        if live:
            _run(["service", "svscan", "onestop"], log)
            _run(["sysrc", "-x", "svscan_enable"], log)
        rcd.unlink()
    plist = root / "Library/LaunchDaemons" / f"{svc_boot.LAUNCHD_LABEL}.plist"
    if plist.exists():
        if live:
            _run(["launchctl", "unload", "-w", str(plist)], log)
        plist.unlink()
    return log


# --- alternatives -----------------------------------------------------------


def _alternatives_cmd() -> str | None:
    for c in (
        "/usr/sbin/alternatives",
        "/usr/sbin/update-alternatives",
        "/usr/bin/update-alternatives",
    ):
        if os.access(c, os.X_OK):
            return c
    return None


def mailer_conf(p: _paths.Paths) -> str:
    return (
        "# mailer.conf: indimail-mta delivers mail (svctool --config=add-alt)\n"
        f"sendmail\t{bin_path(p, 'sendmail')}\n"
        f"send-mail\t{bin_path(p, 'sendmail')}\n"
        f"mailq\t\t{bin_path(p, 'qmail-qread')}\n"
        f"newaliases\t{bin_path(p, 'inewaliases')}\n"
        f"hoststat\t{p.sbindir / 'qmail-tcpto'}\n"
        f"purgestat\t{p.sbindir / 'qmail-tcpok'}\n"
    )


def add_alt(w: Writer, priority: int = 120) -> list[str]:
    """Make this MTA the system's sendmail."""
    p = w.p
    log: list[str] = []
    sendmail = bin_path(p, "sendmail")
    alt = _alternatives_cmd()
    if alt:
        for path in ("/usr/sbin/sendmail", "/usr/lib/sendmail"):
            if os.path.isfile(path) and not os.path.islink(path):
                log.append(f"{path} is a file, should be a link: moved to {path}.old")
                os.rename(path, path + ".old")
        cmd = [alt, "--install", "/usr/sbin/sendmail", "mta", sendmail, str(priority)]
        cmd += ["--slave", "/usr/lib/sendmail", "mta-sendmail", sendmail]
        cmd += ["--slave", "/usr/bin/mailq", "mta-mailq", bin_path(p, "qmail-qread")]
        for link, name, target in (
            ("/usr/bin/rmail", "mta-rmail", "irmail"),
            ("/usr/bin/newaliases", "mta-newaliases", "inewaliases"),
        ):
            if have_command(target):
                cmd += ["--slave", link, name, bin_path(p, target)]
        _run(cmd, log)
        return log
    conf = Path("/etc/mail/mailer.conf")
    if os.path.exists("/usr/sbin/mailwrapper") or conf.exists():
        saved = conf.with_name("mailer.conf.indimail-mta")
        if conf.exists() and not saved.exists():
            os.rename(conf, saved)
        conf.parent.mkdir(parents=True, exist_ok=True)
        w.write(conf, mailer_conf(p), 0o644)
        log.append(f"wrote {conf}")
        return log
    for path in ("/usr/sbin/sendmail", "/usr/lib/sendmail"):
        if os.path.islink(path) and os.readlink(path) == sendmail:
            continue
        if os.path.lexists(path):
            os.rename(path, path + ".old")
        os.symlink(sendmail, path)
        log.append(f"{path} -> {sendmail}")
    return log


def rm_alt(w: Writer) -> list[str]:
    p = w.p
    log: list[str] = []
    sendmail = bin_path(p, "sendmail")
    alt = _alternatives_cmd()
    if alt:
        _run([alt, "--remove", "mta", sendmail], log)
        return log
    conf = Path("/etc/mail/mailer.conf")
    saved = conf.with_name("mailer.conf.indimail-mta")
    if saved.exists():
        os.replace(saved, conf)
        log.append(f"restored {conf}")
        return log
    for path in ("/usr/lib/sendmail", "/usr/sbin/sendmail"):
        if os.path.islink(path) and os.readlink(path) == sendmail:
            os.unlink(path)
            if os.path.lexists(path + ".old"):
                os.rename(path + ".old", path)
            log.append(f"restored {path}")
    return log
