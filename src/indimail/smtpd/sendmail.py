"""sendmail: the Sendmail-compatible front end to qmail-inject.

As the original, the Sendmail options are translated and qmail-inject does
the work: ``-t`` becomes ``-H`` (header recipients and arguments), no ``-t``
becomes ``-a``; ``-f``/``-r`` pass ``-f sender`` and put the sender's
local part and domain in QMAILUSER/QMAILHOST (so a missing From: names the
sender); ``-F`` sets MAILNAME.  qmail-inject runs in this process: no new
interpreter, and its messages keep their ``qmail-inject:`` prefix as when
the original execs it.

A line holding only ``.`` never ends the message: as the original's code
does, input is read to end of file whatever ``-i``/``-oi`` say (Sendmail
and Postfix would stop at the dot without ``-i``; qmail never truncates a
message, and neither do we).  ``-i``/``-oi`` are accepted and change
nothing.

``-bp`` (and the name ``mailq``) lists the queue with qmail-qread; ``-bs``
would run qmail-smtpd on stdin/stdout; ``-bi``/``-I`` (and the name
``newaliases``) are refused as the original refuses them.  The other
Sendmail options are accepted and ignored.
"""

from __future__ import annotations

import os
import sys

from indimail.core.errors import EXIT_PERM, EXIT_TEMP
from indimail.smtpd import qmail_inject
from indimail.smtpd.qmail_inject import GetoptError, SubGetopt

PROG = "sendmail"
USAGE = "usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]"
# Letters of the original, plus arguments where Sendmail takes one and the
# original forgot it (-A, -L, -h, -N) and the DSN/log options -R, -V, -X.
OPTIONS = "UL:h:nIA:vimte:f:r:p:o:B:F:EJxb:N:R:V:X:"
NEWALIASES = "please use fastforward/newaliases instead"


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _usage() -> int:
    _say(f"{PROG}: {USAGE}\n")
    return EXIT_PERM


def _mailq() -> int:
    try:
        from indimail.queue import qmail_qread
    except ImportError:
        _say(f"{PROG}: fatal: unable to run qmail-qread\n")
        return EXIT_TEMP
    return int(qmail_qread.main(["qmail-qread"]) or 0)


def _smtpd() -> int:
    # TODO(qmail-smtpd issue): run qmail-smtpd in this process on stdin/stdout,
    # with the original's environment when PROTO is unset: RELAYCLIENT="",
    # DATABYTES=0, PROTO=TCP, TCPLOCALIP=127.0.0.1, TCPLOCALHOST=localhost,
    # TCPREMOTEIP=127.0.0.1, TCPREMOTEHOST=localhost, TCPREMOTEINFO=sendmail-bs.
    _say(f"{PROG}: fatal: unable to run qmail-smtpd: not available yet\n")
    return EXIT_TEMP


def _sender_identity(sender: str, environ: dict[str, str] | os._Environ[str]) -> None:
    """The original's do_sender(): From: of a message without one is the -f sender."""
    for name in ("QMAILNAME", "MAILNAME", "NAME", "QMAILHOST", "MAILHOST"):
        environ.pop(name, None)
    local, at, domain = sender.rpartition("@")
    if not at:
        environ["QMAILUSER"] = sender
        return
    environ["QMAILHOST"] = domain
    environ["QMAILUSER"] = local


def main(argv: list[str]) -> int:
    """Command ``sendmail`` (and ``mailq``/``newaliases`` by name)."""
    prog = os.path.basename(argv[0]) if argv else PROG
    environ = os.environ
    header_recipients = False
    sender: str | None = None
    fullname: str | None = None
    dot_ends = False  # as the original: read to end of file, never truncate
    opts = SubGetopt([prog, *argv[1:]], OPTIONS)
    try:
        for opt, value in opts:
            arg = value or ""
            if opt == "A":
                if arg[:1] not in ("m", "c"):
                    return _usage()
            elif opt == "I":
                _say(f"{PROG}: fatal: {NEWALIASES}\n")
                return EXIT_PERM
            elif opt == "t":
                header_recipients = True
            elif opt in ("f", "r"):
                sender = arg
            elif opt == "F":
                fullname = arg
            elif opt in ("i", "o"):
                pass  # -i/-oi and every -o option: accepted, no effect
            elif opt in ("E", "J"):
                opts.skip_rest()  # Sony NEWS-OS: optional attached argument
            elif opt == "b":
                mode = arg[:1]
                if mode == "p":
                    return _mailq()
                if mode == "s":
                    return _smtpd()
                if mode == "i":
                    _say(f"{PROG}: fatal: {NEWALIASES}\n")
                    return EXIT_PERM
                if mode not in ("h", "H", "m"):
                    return _usage()
            # U L h n v m x e p B N R V X: accepted and ignored
    except GetoptError as exc:
        _say(f"{prog}: {exc.text}\n")
        return _usage()
    if prog == "mailq":
        return _mailq()
    if prog == "newaliases":
        _say(f"{PROG}: fatal: {NEWALIASES}\n")
        return EXIT_PERM

    if fullname is not None:
        # An explicit -F beats a QMAILNAME inherited from the environment.
        environ.pop("QMAILNAME", None)
        environ["MAILNAME"] = fullname
    inject = ["qmail-inject", "-H" if header_recipients else "-a"]
    if sender is not None:
        inject += ["-f", sender]
        _sender_identity(sender, environ)
        if fullname is not None:
            environ["MAILNAME"] = fullname
    inject += ["--", *opts.rest]
    return qmail_inject.run(inject, environ=environ, dot_ends=dot_ends)
