"""svctool: set up users, control files, queues and supervised services.

    svctool --config=users|qmail|add-boot|rm-boot|add-alt|rm-alt|rmusers
    svctool --smtp=PORT  [service options]       qmail-smtpd.PORT (+ qmail-send.25)
    svctool --queueParam=NAME [queue options]    control/NAME envdir (defaultqueue)
    svctool --qmtp=PORT | --qmqp=PORT            qmail-qmtpd.PORT / qmail-qmqpd.PORT
    svctool --send=IDENT                         qmail-send.IDENT and its queues
    svctool --queued                             qmail-queued (the queue's door)
    svctool --svscanlog                          SERVICEDIR/.svscan/log
    svctool --rmsvc=NAME | --ensvc=NAME          disable / enable a service
    svctool --print-variables --service-name=NAME

Options have the original's ``--name[=value]`` form; the command line is
saved in each service's ``variables/.options``.  Paths come from the paths
module (``--servicedir``, ``--qbase``... override them).  Options of the
original that need parts this build does not have yet are accepted and
reported as ignored, so an install script written for the original runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from indimail.admin import svc_config, svc_services
from indimail.admin.svc_services import Options, Writer
from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError

USAGE = """usage: svctool --config=users|qmail|add-boot|rm-boot|add-alt|rm-alt|rmusers
       svctool --smtp=PORT | --qmtp=PORT | --qmqp=PORT | --send=IDENT [options]
       svctool --queueParam=NAME [options] | --queued | --svscanlog
       svctool --rmsvc=NAME | --ensvc=NAME | --print-variables --service-name=NAME
options: --servicedir=DIR --qbase=DIR --qcount=N --qstart=N --localip=IP
         --maxdaemons=N --maxperip=N --memory=BYTES --dmemory=BYTES --min-free=BYTES
         --ssl --starttls --forcetls --authsmtp --forceauthsmtp --secureauth
         --chkrecipient --chkrelay --masquerade --antispoof --odmr --rbl[=LIST]
         --fsync --fdatasync --syncdir --skipsend --down --utf8 --hidehost
         --servicetag=TAG --nooverwrite --postmaster=ADDR --hostname=FQDN
         --destdir=DIR --boot=systemd|sysv|openrc|rcd|launchd|none"""

VERBS_WITH_VALUE = {
    "config",
    "smtp",
    "qmtp",
    "qmqp",
    "send",
    "queueParam",
    "rmsvc",
    "ensvc",
    "service-name",
}
VERB_FLAGS = {"svscanlog", "queued", "print-variables"}
VALUE_OPTIONS = {
    "servicedir",
    "qbase",
    "qcount",
    "qstart",
    "localip",
    "maxdaemons",
    "maxperip",
    "memory",
    "dmemory",
    "min-free",
    "msgqsize",
    "servicetag",
    "postmaster",
    "hostname",
    "destdir",
    "boot",
    "routes",
    "rbl",
}
FLAG_OPTIONS = {
    "ssl",
    "starttls",
    "forcetls",
    "authsmtp",
    "forceauthsmtp",
    "secureauth",
    "chkrecipient",
    "chkrelay",
    "masquerade",
    "antispoof",
    "odmr",
    "rbl",
    "fsync",
    "fdatasync",
    "syncdir",
    "skipsend",
    "down",
    "utf8",
    "hidehost",
    "nooverwrite",
    "silent",
}
# The original's options whose features this build does not provide yet.
IGNORED = {
    "content-filter",
    "virus-filter",
    "spamfilter",
    "dkverify",
    "dksign",
    "private_key",
    "remote-authsmtp",
    "localfilter",
    "remotefilter",
    "qhpsi",
    "deliverylimit-count",
    "deliverylimit-size",
    "dkimstrict",
    "setuser-priv",
    "cname-lookup",
    "infifo",
    "shared-objects",
    "use-dlmopen",
    "logfilter",
    "barelf",
    "enable-cram",
    "paranoid",
    "dmasquerade",
    "plugin",
    "persistdb",
    "domainlimits",
    "sanitize-env",
    "default-domain",
    "dynamic",
    "compat",
    "no-multi",
}
CONFIG_VERBS = (
    "users",
    "qmail",
    "add-boot",
    "rm-boot",
    "add-alt",
    "rm-alt",
    "remove-alt",
    "rmusers",
)


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--name[=value]`` arguments -> {name: value}; warnings for ignored ones."""
    opts: dict[str, str] = {}
    warnings: list[str] = []
    for arg in argv:
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}\n{USAGE}")
        name, eq, value = arg[2:].partition("=")
        if name in ("help",):
            raise UsageError(USAGE)
        if name in IGNORED:
            warnings.append(f"option --{name} needs a feature this build lacks: ignored")
            continue
        if name in VERBS_WITH_VALUE or (name in VALUE_OPTIONS and name not in FLAG_OPTIONS):
            if not eq or value == "":
                raise UsageError(f"--{name} needs a value (--{name}=...)")
        elif name in FLAG_OPTIONS or name in VERB_FLAGS:
            if eq and name not in VALUE_OPTIONS:
                raise UsageError(f"--{name} takes no value")
        else:
            raise UsageError(f"unknown option --{name}\n{USAGE}")
        opts[name] = value
    return opts, warnings


def _int(opts: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = opts.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"--{name}={raw}: not a number") from None
    if value < minimum:
        raise UsageError(f"--{name}={raw}: must be at least {minimum}")
    return value


def _port(opts: dict[str, str], name: str) -> int:
    value = _int(opts, name, 0, 1)
    if value > 65535:
        raise UsageError(f"--{name}={value}: not a port")
    return value


def build_options(p: _paths.Paths, opts: dict[str, str], command_line: str) -> Options:
    qbase = Path(opts["qbase"]) if "qbase" in opts else p.queue_base
    o = Options(
        servicedir=Path(opts.get("servicedir") or p.servicedir),
        qbase=qbase,
        qcount=_int(opts, "qcount", p.queue_count, 1),
        qstart=_int(opts, "qstart", p.queue_start, 0),
        command_line=command_line,
    )
    o.localip = opts.get("localip", o.localip)
    o.maxdaemons = _int(opts, "maxdaemons", o.maxdaemons, 1)
    o.maxperip = _int(opts, "maxperip", o.maxperip, 1)
    o.memory = _int(opts, "memory", o.memory, 1)
    o.dmemory = _int(opts, "dmemory", o.dmemory, 1)
    o.min_free = _int(opts, "min-free", o.min_free, 0)
    o.msgqsize = _int(opts, "msgqsize", o.msgqsize, 1)
    o.servicetag = opts.get("servicetag", "")
    o.routes = opts.get("routes", "")
    for flag in FLAG_OPTIONS - {"rbl", "silent"}:
        setattr(o, flag.replace("-", "_"), flag in opts)
    if "rbl" in opts:
        o.rbl = True
        o.rbl_list = opts["rbl"]
    return o


def _say(lines: list[str], quiet: bool) -> None:
    if not quiet:
        for line in lines:
            sys.stdout.write(line + "\n")


def _svc(p: _paths.Paths, *args: str) -> None:
    svc = p.bindir / "svc"
    cmd = [str(svc)] if svc.exists() else [sys.executable, "-m", "indimail", "svc"]
    subprocess.run([*cmd, *args], capture_output=True)


def print_variables(sdir: Path) -> str:
    from indimail.core.envdir import envdir_operations

    vdir = sdir / "variables"
    if not vdir.is_dir():
        raise Fatal(100, f"{vdir} does not exist")
    out = [f"service {sdir.name}"]
    for name, value in envdir_operations(vdir):
        out.append(f"{name}={value}" if value is not None else f"{name} (unset)")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    opts, warnings = parse(argv[1:])
    for w in warnings:
        sys.stderr.write(f"svctool: warning: {w}\n")
    quiet = "silent" in opts
    p = _paths.get()
    command_line = svc_services.quote_command_line(["svctool", *argv[1:]])
    o = build_options(p, opts, command_line)
    w = Writer(p)
    did = False
    config = opts.get("config")
    if config is not None:
        did = True
        if config not in CONFIG_VERBS:
            raise UsageError(f"--config={config}: expected one of {', '.join(CONFIG_VERBS)}")
        destdir = Path(opts["destdir"]) if opts.get("destdir") else None
        if config == "users":
            _say(svc_config.create_users(p), quiet)
        elif config == "rmusers":
            _say(svc_config.remove_users(p), quiet)
        elif config == "qmail":
            made = svc_config.qmail_config(w, opts.get("hostname"), opts.get("postmaster"))
            _say([f"created {m}" for m in made], quiet)
        elif config == "add-boot":
            _say(svc_config.add_boot(w, destdir, opts.get("boot")), quiet)
        elif config == "rm-boot":
            _say(svc_config.rm_boot(w, destdir), quiet)
        elif config == "add-alt":
            _say(svc_config.add_alt(w), quiet)
        else:
            _say(svc_config.rm_alt(w), quiet)
    if "smtp" in opts:
        did = True
        sdir = svc_services.smtp_service(w, o, _port(opts, "smtp"))
        _say([f"created {sdir}"], quiet)
    for kind, verb in (("qmtpd", "qmtp"), ("qmqpd", "qmqp")):
        if verb in opts:
            did = True
            sdir = svc_services.qmtp_qmqp_service(w, o, kind, _port(opts, verb))
            _say([f"created {sdir}"], quiet)
    if "send" in opts:
        did = True
        sdir = svc_services.send_service(w, o, opts["send"])
        _say([f"created {sdir}"], quiet)
    if "queueParam" in opts:
        did = True
        qdir = svc_services.queue_param(w, o, opts["queueParam"])
        _say([f"created {qdir}"], quiet)
    if "queued" in opts:
        did = True
        _say([f"created {svc_services.queued_service(w, o)}"], quiet)
    if "svscanlog" in opts:
        did = True
        _say([f"created {svc_services.svscan_log(w, o)}"], quiet)
    if "rmsvc" in opts:
        did = True
        for name in opts["rmsvc"].split(","):
            sdir = o.servicedir / name
            if not sdir.is_dir():
                raise Fatal(100, f"no service {sdir}")
            (sdir / "down").touch()
            _svc(p, "-d", str(sdir))
            _say([f"disabled {sdir}"], quiet)
    if "ensvc" in opts:
        did = True
        for name in opts["ensvc"].split(","):
            sdir = o.servicedir / name
            if not sdir.is_dir():
                raise Fatal(100, f"no service {sdir}")
            try:
                os.unlink(sdir / "down")
            except FileNotFoundError:
                pass
            _svc(p, "-u", str(sdir))
            _say([f"enabled {sdir}"], quiet)
    if "print-variables" in opts:
        did = True
        names = (
            opts["service-name"].split(",")
            if "service-name" in opts
            else svc_services.service_names(o.servicedir)
        )
        for name in names:
            sys.stdout.write(print_variables(o.servicedir / name))
    if not did:
        raise UsageError(USAGE)
    return 0
