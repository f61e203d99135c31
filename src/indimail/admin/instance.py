"""indimail-instance: create a self-contained rootless instance.

Everything lives under one directory and every role (qmailq, qmails,
alias...) maps to the invoking user, so the whole MTA runs without root:

    DIR/indimail-paths.conf   paths + role mapping (read by every command)
    DIR/env                   ``. DIR/env`` puts DIR/bin first on PATH
    DIR/bin/<command>         one symlink per command to the one binary
    DIR/etc/control/...       control files from the host name
    DIR/etc/users/assign      the invoking user -> DIR/home/<user>
    DIR/var/queue/queueN      QUEUE_COUNT queues made by queue-fix
    DIR/home/<user>/Maildir/  the user's mailbox
    DIR/var/alias/            postmaster, mailer-daemon, root (.qmail-*) and
                              every other local part (the ``+`` assign line)
    DIR/service DIR/log DIR/run

A command invoked as ``DIR/bin/NAME`` finds ``DIR/indimail-paths.conf`` by
itself; otherwise set ``INDIMAIL_PATHS`` (``DIR/env`` does).
"""

from __future__ import annotations

import getopt
import grp
import os
import pwd
import shutil
import socket
import sys
from pathlib import Path

from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError

USAGE = "usage: indimail-instance [-q queues] [-s split] [-H fqdn] [-f] DIR"


def default_fqdn() -> str:
    """The host's FQDN as config-fast would take it.

    A name without a dot gets ``.localdomain``: qmail-inject appends
    ``defaultdomain`` to undotted hosts, so an undotted ``me`` would make the
    instance's own addresses look remote.
    """
    name = (socket.getfqdn() or socket.gethostname() or "localhost").lower()
    if "." not in name:
        name += ".localdomain"
    return name


def control_defaults(fqdn: str, queue_base: Path) -> dict[str, str]:
    """Control files written at setup (admin.md §5) for ``fqdn``."""
    labels = fqdn.split(".")
    defaultdomain = ".".join(labels[1:]) if len(labels) > 1 else fqdn
    plusdomain = ".".join(labels[-2:]) if len(labels) > 1 else fqdn
    values = {
        "me": fqdn,
        "defaultdomain": defaultdomain,
        "plusdomain": plusdomain,
        "locals": fqdn,
        "rcpthosts": fqdn,
        "localiphost": fqdn,
        "smtpgreeting": fqdn,
        "defaultdelivery": "./Maildir/",
        "databytes": "20971520",
        "timeoutsmtpd": "300",
        "timeoutremote": "300",
        "queue_base": str(queue_base),
    }
    if "." in fqdn:
        values["defaulthost"] = fqdn
        values["envnoathost"] = fqdn
    return values


def binary_path() -> Path:
    """The multicall binary that the instance's symlinks point to."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve()
    beside = Path(sys.executable).parent / "indimail"
    if beside.exists():
        return beside
    found = shutil.which("indimail")
    if found:
        return Path(found)
    raise Fatal(111, "cannot find the indimail binary to link commands to")


def make_maildir(path: Path) -> None:
    """Create ``path/{cur,new,tmp}`` with mode 0700."""
    for sub in ("", "cur", "new", "tmp"):
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def create(
    top: Path,
    queues: int = 5,
    split: int = _paths.DIRSPLIT,
    fqdn: str | None = None,
    force: bool = False,
) -> Path:
    """Create the instance under ``top``; return the paths file."""
    from indimail.cli import COMMANDS
    from indimail.queue.queue_fix import create_queue

    top = top.resolve()
    conf = top / _paths.PATHS_FILE
    if conf.exists() and not force:
        raise Fatal(100, f"{top} already holds an instance (use -f to refresh it)")
    fqdn = fqdn or default_fqdn()
    user = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(os.getgid()).gr_name
    dirs = {
        "PREFIX": top,
        "BINDIR": top / "bin",
        "SBINDIR": top / "bin",
        "QMAILHOME": top / "var",
        "SYSCONFDIR": top / "etc",
        "SHAREDDIR": top / "share",
        "LIBEXECDIR": top / "libexec",
        "SERVICEDIR": top / "service",
        "LOGDIR": top / "log",
        "RUNDIR": top / "run",
        "QUEUE_BASE": top / "var" / "queue",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for sub in ("control", "users", "tcp", "certs"):
        (top / "etc" / sub).mkdir(exist_ok=True)
    lines = ["# rootless indimail-mta instance: every role is the invoking user", "ROOTLESS=1"]
    lines += [f"{k}={v}" for k, v in dirs.items()]
    lines += [f"QUEUE_COUNT={queues}", "QUEUE_START=1", f"CONFSPLIT={split}", "BIGTODO=0"]
    lines += [f"USER_{role.upper()}={user.pw_name}" for role in _paths.USER_ROLES]
    lines += [f"GROUP_{role.upper()}={group}" for role in _paths.GROUP_ROLES]
    tmp = conf.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, conf)
    (top / "env").write_text(
        f"# source me: . {top}/env\n"
        f"INDIMAIL_PATHS={conf}; export INDIMAIL_PATHS\n"
        f'PATH={top}/bin:"$PATH"; export PATH\n'
    )
    binary = binary_path()
    for name in COMMANDS:
        link = top / "bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(binary)

    p = _paths.load(environ={"INDIMAIL_PATHS": str(conf)})
    controldir = p.controldir
    for name, value in control_defaults(fqdn, p.queue_base).items():
        target = controldir / name
        if not target.exists():
            target.write_text(value + "\n")
    home = top / "home" / user.pw_name
    make_maildir(home / "Maildir")
    alias = p.qmailhome / "alias"
    make_maildir(alias / "Maildir")
    for name in ("postmaster", "mailer-daemon", "root"):
        dot = alias / f".qmail-{name}"
        if not dot.exists():
            dot.write_text("./Maildir/\n")
    assign = p.assigndir / "assign"
    if not assign.exists():
        ids = f"{user.pw_name}:{user.pw_uid}:{user.pw_gid}"
        # the user by name; every other local part goes to the alias tree
        assign.write_text(
            f"={user.pw_name}:{ids}:{home}:::\n"
            f"+{user.pw_name}-:{ids}:{home}:-::\n"
            f"+:{ids}:{alias}:-::\n.\n"
        )
    from indimail.deliver.qmail_newu import build

    build(p.assigndir)
    for qdir in p.queue_dirs():
        create_queue(qdir, p)
    return conf


def main(argv: list[str]) -> int:
    """indimail-instance [-q queues] [-s split] [-H fqdn] [-f] DIR"""
    try:
        opts, args = getopt.getopt(argv[1:], "q:s:H:f")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{USAGE}") from None
    queues, split, fqdn, force = 5, _paths.DIRSPLIT, None, False
    for opt, val in opts:
        if opt in ("-q", "-s"):
            if not val.isdecimal() or int(val) < 1:
                raise UsageError(f"{opt} needs a positive number, got {val!r}")
            if opt == "-q":
                queues = int(val)
            else:
                split = min(int(val), _paths.DIRSPLIT)
        elif opt == "-H":
            fqdn = val.strip().lower()
            if not fqdn:
                raise UsageError("-H needs a host name")
        elif opt == "-f":
            force = True
    if len(args) != 1:
        raise UsageError(USAGE)
    conf = create(Path(args[0]), queues=queues, split=split, fqdn=fqdn, force=force)
    top = conf.parent
    sys.stdout.write(
        f"instance created in {top}\n"
        f"use it with:  . {top}/env\n"
        f"or run its commands as {top}/bin/COMMAND\n"
    )
    return 0
