"""create_services: the default install sequence (admin.md §4).

    create_services [--servicedir=DIR] [--qbase=DIR] [--qcount=N] [--qstart=N]
                    [--hostname=FQDN] [--postmaster=ADDR] [--port-offset=N]
                    [--no-boot] [--no-alt] [--destdir=DIR] [--add-boot] [--silent]

Runs svctool for: users, qmail control files, SMTP on 465 (SMTPS + AUTH),
25 (with the delivery service qmail-send.25 and its queues) and 587
(submission: AUTH + TLS required), ODMR on 366, the ``defaultqueue``
parameters, qmail-queued (the queue's door for qmail-smtpd, bounces and
users' sendmail), QMTP on 209, QMQP on 628, svscan's own log, the MTA switch
and boot integration.  Services of the original that need parts this
build does not have (greylisting, TLSA, qscanq, clamd, fifologger,
udplogger, slowq, virtual domains) are skipped with a note.

In a rootless instance, users, alternatives and boot are skipped, and
``--port-offset=N`` moves every listener to N+port (e.g. 20025), since the
well-known ports may not be free or allowed there.
"""

from __future__ import annotations

import sys

from indimail.admin import svctool
from indimail.core import paths as _paths
from indimail.core.errors import UsageError

USAGE = (
    "usage: create_services [--servicedir=DIR] [--qbase=DIR] [--qcount=N] [--qstart=N]\n"
    "       [--hostname=FQDN] [--postmaster=ADDR] [--port-offset=N] [--no-boot] [--no-alt]\n"
    "       [--add-boot] [--destdir=DIR] [--silent]"
)
PASSED = ("servicedir", "qbase", "qcount", "qstart")
SKIPPED = (
    "greylist.1999, qmail-daned.1998, slowq-send, qscanq, clamd, qmail-logfifo, udplogger.3000"
)


def plan(opts: dict[str, str], p: _paths.Paths) -> list[list[str]]:
    """The svctool command lines, in order (argv without the program name)."""
    common = [f"--{k}={opts[k]}" for k in PASSED if k in opts]
    if "qbase" not in opts:
        common.append(f"--qbase={p.queue_base}")
    if "qcount" not in opts:
        common.append(f"--qcount={p.queue_count}")
    if "qstart" not in opts:
        common.append(f"--qstart={p.queue_start}")
    try:
        offset = int(opts.get("port-offset", "0"))
    except ValueError:
        raise UsageError(f"--port-offset={opts['port-offset']}: not a number") from None
    if offset < 0 or offset > 65535 - 628:
        raise UsageError(f"--port-offset={offset}: out of range")
    silent = ["--silent"] if "silent" in opts else []
    smtp_common = [
        *common,
        "--starttls",
        # no --chkrecipient: the original passes it, but its svctool then
        # empties CHECKRECIPIENT again (the --chksender block), so installs
        # run without the check; a fresh install has no recipients cdb and
        # the check would refuse every local address
        "--chkrelay",
        "--masquerade",
        "--min-free=52428800",
        "--fsync",
        "--syncdir",
        *silent,
    ]
    steps: list[list[str]] = []
    if not p.rootless:
        steps.append(["--config=users", *silent])
    qmail = ["--config=qmail", "--fsync", "--syncdir", *silent]
    postmaster = opts.get("postmaster") or f"{p.qmailhome}/alias/Maildir/"
    qmail.append(f"--postmaster={postmaster}")
    if "hostname" in opts:
        qmail.append(f"--hostname={opts['hostname']}")
    qmail += [f"--servicedir={opts['servicedir']}"] if "servicedir" in opts else []
    steps.append(qmail)
    steps.append([f"--smtp={465 + offset}", "--ssl", "--authsmtp", "--rbl", *smtp_common])
    send = ["--skipsend"] if offset else []
    steps.append([f"--smtp={25 + offset}", "--rbl", *send, *smtp_common])
    if offset:
        steps.append(["--send=25", *common, "--fsync", "--syncdir", *silent])
    steps.append(
        [
            f"--smtp={587 + offset}",
            "--forceauthsmtp",
            "--antispoof",
            "--forcetls",
            "--secureauth",
            *smtp_common,
        ]
    )
    steps.append([f"--smtp={366 + offset}", "--odmr", "--forceauthsmtp", *smtp_common])
    steps.append(
        [
            "--queueParam=defaultqueue",
            *common,
            "--min-free=52428800",
            "--fsync",
            "--syncdir",
            *silent,
        ]
    )
    steps.append(["--queued", *common, "--maxdaemons=64", "--min-free=52428800", *silent])
    for verb, port in (("qmtp", 209), ("qmqp", 628)):
        steps.append(
            [f"--{verb}={port + offset}", *common, "--maxdaemons=75", "--maxperip=25", *silent]
        )
    sdir = [f"--servicedir={opts['servicedir']}"] if "servicedir" in opts else []
    steps.append(["--svscanlog", *sdir, *silent])
    if not p.rootless and "no-alt" not in opts:
        steps.append(["--config=add-alt", *silent])
    if not p.rootless and "no-boot" not in opts:
        boot = ["--config=add-boot", *silent]
        if "destdir" in opts:
            boot.append(f"--destdir={opts['destdir']}")
        steps.append(boot)
    return steps


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    known_values = {*PASSED, "hostname", "postmaster", "port-offset", "destdir"}
    known_flags = {"no-boot", "no-alt", "add-boot", "silent"}
    for arg in argv[1:]:
        name, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--"):
            raise UsageError(USAGE)
        if name in known_values and eq and value:
            opts[name] = value
        elif name in known_flags and not eq:
            opts[name] = ""
        elif name in ("help",):
            raise UsageError(USAGE)
        else:
            raise UsageError(f"bad option {arg!r}\n{USAGE}")
    p = _paths.get()
    for step in plan(opts, p):
        if "silent" not in opts:
            sys.stdout.write("svctool " + " ".join(step) + "\n")
            sys.stdout.flush()
        code = svctool.main(["svctool", *step])
        if code:
            return code
    if "silent" not in opts:
        sys.stdout.write(f"not created (not in this build yet): {SKIPPED}\n")
    return 0
