"""qmail-showctl: explain the effective configuration, as indimail-mta does.

``qmail-showctl [-acCiqeEsv]`` (no option = ``-i -q``):

* ``-i`` internals: directories, user-ext delimiter, paternalism, spawn
  limit, the numeric ids of every role (with the account name after it when
  a role is mapped to another name, as in a rootless instance);
* ``-q`` queues: split, big todo, queue base, queue start/count, the queue
  directories present;
* ``-C`` concurrency limits (``concurrencylocal``/``remote`` and the
  per-queue ``concurrencyl.<queue>``/``concurrencyr.<queue>`` files);
* ``-c`` every control file the original describes, in its wording
  (``name<pad to 22>: <text>`` and ``(Default)`` when the file is missing),
  followed by the controls of this rewrite that the original does not list;
* ``-e`` files in CONTROLDIR that nothing uses (on stderr);
* ``-E`` the environment that ``defaultqueue`` envdirs give;
* ``-v`` the ``*-release`` files of SYSCONFDIR; ``-s`` runs
  ``svctool --dumpconfig``; ``-a`` all but ``-s``.

A control file that exists but cannot be read, or a number file holding
something else than a number, is shown as ``Oops! <error>`` in place of its
value and repeated on stderr; the listing goes on and the exit code is 111.
"""

from __future__ import annotations

import getopt
import grp
import os
import pwd
import sys
from pathlib import Path
from typing import BinaryIO

from indimail.core import control, envdir
from indimail.core import paths as _paths
from indimail.core.errors import Fatal

PROG = "qmail-showctl"
FATAL = f"{PROG}: fatal: "

AUTO_BREAK = "-"  # conf-break
AUTO_PATRN = 0o002  # conf-patrn, shown in decimal
AUTO_SPAWN = 500  # conf-spawn

USER_IDS = ("alias", "qmaild", "qmaill", "qmailp", "qmailq", "qmailr", "qmails", "indimail")
USER_IDS += ("qscand",)
GROUP_IDS = ("nofiles", "qmail", "indimail", "qscand", "qcerts")
EXTRA_QUEUES = ("slowq", "nqueue", "qmta")

USAGE = (
    "usage: qmail-showctl [-cCie]\n"
    "      options:\n"
    "        -v show version information for all entire indimail suite\n"
    "        -c show control file information\n"
    "        -C show concurrency limits for deliveries\n"
    "        -i show internal information\n"
    "        -q Display indimail-mta queues\n"
    "        -s Dump entire indimail-mta configuration\n"
    "        -e Display files that shouldn't be there\n"
    "        -E Display default env variables set\n"
    "        -a Do all of the above"
)

# Control files the original knows (valid_control_files), plus the ones of
# this rewrite; anything else in CONTROLDIR is reported by -e.
KNOWN_FILES = frozenset(
    [
        "bouncefrom",
        "bouncehost",
        "bouncesubject",
        "bouncemaxbytes",
        "bouncemessage",
        "doublebouncesubject",
        "doublebouncemessage",
        "badhost",
        "badmailpatterns",
        "badrcptpatterns",
        "spamignorepatterns",
        "filterargs",
        "spamfilter",
        "concurrencylocal",
        "concurrencyremote",
        "maxdeliveredto",
        "domainqueue",
        "from.envrules",
        "hash_method",
        "redirectremote",
        "atrnaccess",
        "rcpt.envrules",
        "databytes",
        "maxhops",
        "defaultdomain",
        "defaulthost",
        "dnsbllist",
        "doublebouncehost",
        "doublebounceto",
        "envnoathost",
        "extraqueue",
        "helohost",
        "idhost",
        "localiphost",
        "locals",
        "me",
        "morercpthosts",
        "signatures",
        "bodycheck",
        "morercpthosts.cdb",
        "nodnscheck",
        "percenthack",
        "plusdomain",
        "qmqpservers",
        "originipfield",
        "queuelifetime",
        "bouncelifetime",
        "rcpthosts",
        "smtpgreeting",
        "smtproutes",
        "qmtproutes",
        "queue_base",
        "timeoutconnect",
        "timeoutremote",
        "timeoutsmtpd",
        "timeoutread",
        "timeoutwrite",
        "virtualdomains",
        "etrnhosts",
        "relayclients",
        "relaydomains",
        "tarpitcount",
        "tarpitdelay",
        "maxrecipients",
        "maxcmdlen",
        "defaultdelivery",
        "blackholedpatterns",
        "blackholedrcptpatterns",
        "goodrcptpatterns",
        "outgoingip",
        "domainbindings",
        "bindroutes",
        "badextpatterns",
        "holdremote",
        "holdlocal",
        "envheaders",
        "logheaders",
        "msgqueuelen",
        "msgqueuesize",
        "global_vars",
        "qfilters",
        ".qmail_control",
        "qregex",
        "recipients",
        "remote_auth",
        "remote_auth.cdb",
        "filters.d",
        ".indimail_control",
        "bounce.envrules",
        "srs_domain",
        "srs_secrets",
        "srs_maxage",
        "srs_hashlength",
        "srs_hashmin",
        "dkimkey",
        "signaturedomains",
        "nosignaturedomains",
        "domainkeys",
        "spfbehavior",
        "spfexp",
        "spfguess",
        "spfrules",
        "batvkey",
        "batvkeystale",
        "batvnosignremote",
        "batvnosignlocals",
        "tlsclientmethod",
        "tlsservermethod",
        "tlsclients",
        "servercert.pem",
        "servercipherlist",
        "clientcipherlist",
        "serverciphersuite",
        "clientciphersuite",
        "clientcert.pem",
        "conf-syncdir",
        "conf-fsync",
        "conf-fdatasync",
        "servicedir.conf",
        "level2-tlds",
        "level3-tlds",
        "libmysql",
        "host.master",
        "host.cntrl",
        "host.mysql",
        "hostip",
        "hostid",
        "chksenderdomains",
        "quarantine",
        "removeheaders",
        "mailarchive",
        "todointerval",
        "procmailrc",
    ]
)
CDB_SQL_FILES = (
    "authdomains",
    "badhelo",
    "badext",
    "badmailfrom",
    "badrcptto",
    "blackholedsender",
    "blackholedrcpt",
    "chkrcptdomains",
    "goodrcptto",
    "relaymailfrom",
    "spamignore",
    "greylist.white",
    "tlsa.white",
    "tlsadomains",
    "badip",
)
SKIPPED_FILES = ("libindimail", "ratelimit", "cache", "defaultqueue")


def safe(text: str) -> bytes:
    """Bytes outside ' '..'~' shown as '?', as the original's safeput."""
    raw = text.encode("utf-8", "surrogateescape")
    return bytes(b if 32 <= b <= 126 else ord("?") for b in raw)


class Show:
    """Writes the report; remembers whether anything went wrong."""

    def __init__(self, p: _paths.Paths, out: BinaryIO, err: BinaryIO) -> None:
        self.p = p
        self.controldir = p.controldir
        self.out = out
        self.err = err
        self.failed = False
        self.me: str | None = None

    # -- output helpers ------------------------------------------------------

    def put(self, text: str | bytes) -> None:
        self.out.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))

    def error(self, message: str) -> None:
        """Record a problem: on stderr now, exit 111 at the end."""
        self.failed = True
        self.out.flush()
        self.err.write(f"{PROG}: {message}\n".encode("utf-8", "surrogateescape"))
        self.err.flush()

    def _label(self, fn: str) -> None:
        self.put(f"{fn:<22s}: ")

    def _oops(self, exc: Fatal) -> None:
        self.put(b"Oops! " + safe(exc.message) + b"\n\n")
        self.error(exc.message)

    # -- the three kinds of control file of the original ---------------------

    def do_int(self, fn: str, default: str, pre: str, post: str) -> None:
        self._label(fn)
        try:
            if control.read_line(fn, controldir=self.controldir) in (None, ""):
                self.put(f"{pre}{default}{post} (Default)\n\n")
                return
            value = control.read_int(fn, 0, controldir=self.controldir)
        except Fatal as exc:
            self._oops(exc)
            return
        self.put(f"{pre}{max(value, 0)}{post}\n\n")

    def do_str(self, fn: str, flagme: bool, default: str, pre: str) -> None:
        self._label(fn)
        try:
            value = control.read_line(fn, controldir=self.controldir)
        except Fatal as exc:
            self._oops(exc)
            return
        if value is None:
            shown = self.me if flagme and self.me else default
            self.put(pre.encode() + safe(shown) + b" (Default) \n\n")
        else:
            self.put(pre.encode() + safe(value) + b"\n\n")

    def do_lst(self, fn: str, default: str, pre: str, post: str) -> bool:
        self._label(fn)
        try:
            items = control.read_list(fn, controldir=self.controldir)
        except Fatal as exc:
            self._oops(exc)
            return False
        if items is None:
            self.put(f"{default} (Default)\n\n")
            return False
        for i, item in enumerate(items):
            if i:
                self.put(" " * 24)
            self.put(pre.encode() + safe(item) + post.encode() + b"\n")
        self.put("\n")
        return True

    def do_envdir(self, fn: str, default: str, pre: str) -> None:
        """An envdir in CONTROLDIR (global_vars): one ``NAME=value`` a line."""
        self._label(fn)
        path = self.controldir / fn
        if not path.is_dir():
            self.put(f"{default} (Default)\n\n")
            return
        try:
            values = envdir.read_envdir(path)
        except Fatal as exc:
            self._oops(exc)
            return
        for i, (name, value) in enumerate(sorted(values.items())):
            if i:
                self.put(" " * 24)
            shown = f"{name}=" + ("(unset)" if value is None else value)
            self.put(pre.encode() + safe(shown) + b"\n")
        self.put("\n")

    # -- sections ------------------------------------------------------------

    def show_version(self) -> None:
        sysconf = self.p.sysconfdir
        try:
            names = sorted(os.listdir(sysconf))
        except OSError as exc:
            raise Fatal(111, f"unable to open directory {sysconf}: {exc.strerror}") from None
        self.put("---------------- software version information ----------------\n")
        for name in names:
            if not name.endswith("-release"):
                continue
            try:
                data = (sysconf / name).read_bytes()
            except OSError as exc:
                self.error(f"unable to read {sysconf / name}: {exc.strerror}")
                continue
            self.put(data + b"\n")

    def show_env(self, home: str | None) -> None:
        self.put("------------------ begin show env ----------------------------\n")
        environ: dict[str, str] = {}
        if home:
            environ["HOME"] = home
        try:
            envdir.apply_defaultqueue(self.controldir, environ)
        except Fatal as exc:
            self.error(exc.message)
        for name, value in sorted(environ.items()):
            self.put(safe(f"{name}={value}") + b"\n")
        self.put("\n")

    def _id_line(self, role: str, name: str, is_group: bool) -> None:
        try:
            num = grp.getgrnam(name).gr_gid if is_group else pwd.getpwnam(name).pw_uid
        except KeyError:
            kind = "group" if is_group else "user"
            self.put(f" {role:<8s}: ? (no {kind} {name})\n")
            self.error(f"unable to find {kind} {name} for role {role}")
            return
        suffix = f" ({name})" if name != role else ""
        self.put(f" {role:<8s}: {num}{suffix}\n")

    def show_internals(self, home: str | None) -> None:
        p = self.p
        c = self.controldir
        self.put("------------------ begin show internals ----------------------\n")
        lines = [
            f"indimail-mta  home dir: {p.qmailhome}\n",
            f"user        assign dir: {p.assigndir}\n",
            f"tcp         access dir: {p.sysconfdir}/tcp\n",
            f"certificates       dir: {p.certdir}\n",
            f"control            dir: {c}\n",
            f"filter             dir: {c}/filters.d\n",
            f"global environment dir: {c}/defaultqueue\n",
        ]
        if home and os.path.isdir(os.path.join(home, ".defaultqueue")):
            lines.append(f"user   environment dir: {home}/.defaultqueue\n")
        lines += [
            f"surbl        cache dir: {c}/cache\n",
            f"domainkeys         dir: {c}/domainkeys\n",
            "\n",
            f"user-ext delimiter      : {AUTO_BREAK}\n",
            f"paternalism (in decimal): {AUTO_PATRN}\n",
            f"silent concurrency limit: {AUTO_SPAWN}\n",
            "\n",
            "user  ids\n",
        ]
        self.put("".join(lines))
        for role in USER_IDS:
            self._id_line(role, p.user(role), False)
        self.put("\ngroup ids\n")
        for role in GROUP_IDS:
            self._id_line(role, p.group(role), True)
        self.put("\n")

    def show_queues(self) -> None:
        p = self.p
        self.put("--------------------- begin show queues ----------------------\n")
        self.put(f"subdirectory split      : {p.conf_split}\n")
        self.put(f"big todo / big intd     : {'Yes' if p.bigtodo else 'No'}\n")
        self.put(f"queue start             : {p.queue_start}\n")
        self.put(f"queue count             : {p.queue_count}\n")
        try:
            base = p.queue_base
        except Fatal as exc:
            self.error(exc.message)
            self.put("\n")
            return
        self.put(f"indimail-mta  queue base: {base}\n\n")
        main_seen = False
        n = p.queue_start
        while (base / f"queue{n}" / "lock" / "sendmutex").exists():
            if not main_seen:
                self.put("main  queue directories\n")
                main_seen = True
            self.put(f"queue {n:03d} {base}/queue{n}\n")
            n += 1
        extra_seen = False
        for name in EXTRA_QUEUES:
            if (base / name / "lock" / "sendmutex").exists():
                if not extra_seen:
                    if main_seen:
                        self.put("\n")
                    self.put("extra queue directories\n")
                    extra_seen = True
                self.put(f"{name:<6s} {base}/{name}\n")
        self.put("\n")

    def show_concurrency(self, names: list[str]) -> None:
        self.put("-------------------- concurrency limits ----------------------\n")
        shown = False

        def globals_once() -> None:
            nonlocal shown
            if not shown:
                shown = True
                self.do_int("concurrencylocal", "10", "Global Local  concurrency is ", "")
                self.do_int("concurrencyremote", "20", "Global Remote concurrency is ", "")

        for name in names:
            if name.startswith("concurrencyr."):
                globals_once()
                self.do_int(name, "20", "Remote  Queue concurrency is ", "")
            elif name.startswith("concurrencyl."):
                globals_once()
                self.do_int(name, "10", "Local   Queue concurrency is ", "")
        globals_once()

    def show_control(self) -> None:
        self.put("------------------- begin control files ----------------------\n")
        try:
            self.me = control.read_line("me", controldir=self.controldir)
        except Fatal:
            self.me = None  # do_str("me") below reports it
        libindimail = os.environ.get("VIRTUAL_PKG_LIB") or (
            (self.controldir / "libindimail").exists() and "libindimail"
        )
        local_ip = "127.0.0.1"
        local_id = "0x00"
        s, i, lst = self.do_str, self.do_int, self.do_lst

        s("me", False, "undefined! Uh-oh", "My name is ")
        pre = "SMTP clients may send messages to recipients at "
        if lst("rcpthosts", "SMTP clients may send messages to any recipient.", pre, "."):
            lst("morercpthosts", "No effect", pre, ".")
        else:
            lst(
                "morercpthosts",
                "No rcpthosts; morercpthosts is irrelevant.",
                "No rcpthosts; doesn't matter that morercpthosts has ",
                ".",
            )
        self._label("morercpthosts.cdb")
        self.put(self._morercpthosts_cdb() + "\n\n")
        lst(
            "locals",
            "Messages for me are delivered locally.",
            "Messages for ",
            " are delivered locally.",
        )
        s("defaultdomain", True, "defaultdomain", "Default domain name is ")
        s("defaulthost", True, "defaulthost", "Default host name is ")
        s("defaultdelivery", False, "undefined! Uh-oh", "Default Delivery is: ")
        s("smtpgreeting", True, "smtpgreeting", "SMTP greeting: 220 ")
        lst("smtproutes", "No artificial SMTP routes.", "SMTP route: ", "")
        lst("remote_auth", "No users for remote authenticated SMTP", "Remote SMTP Auth Users: ", "")
        lst("signaturedomains", "No DKIM signature domains.", "DKIM signature domain(s): ", "")
        lst("virtualdomains", "No virtual domains.", "Virtual domain: ", "")

        allowed = "Any SMTP connection is allowed."
        lst("blackholedsender", allowed, "", " is immediately dropped for MAIL FROM.")
        lst(
            "blackholedpatterns",
            allowed,
            "",
            " is immediately dropped for MAIL FROM. (Not if line starts with !).",
        )
        lst("blackholedrcpt", allowed, "", " is immediately dropped for RCPT TO.")
        lst(
            "blackholedrcptpatterns",
            allowed,
            "",
            " is immediately dropped for RCPT TO. (Not if line starts with !).",
        )
        lst("badhelo", "Any HELO/EHLO greeting is allowed.", "", " not accepted in HELO/EHLO.")
        lst(
            "badhost",
            "Any external remote hosts are allowed.",
            "",
            " pattern will be rejected for external host.",
        )
        lst(
            "badip",
            "Any external IP are allowed.",
            "",
            " pattern will be rejected for external IP.",
        )
        lst("badmailfrom", "Any MAIL FROM is allowed.", "", " not accepted in MAIL FROM.")
        lst(
            "badmailpatterns",
            "Any MAIL FROM is allowed.",
            "",
            " not accepted in MAIL FROM (Not if line starts with !).",
        )
        lst("badrcptto", "Any RCPT TO is allowed.", "", " not accepted in RCPT TO.")
        lst(
            "badrcptpatterns",
            "Any RCPT TO is allowed.",
            "",
            " not accepted in RCPT TO (Not if line starts with !).",
        )
        lst("badext", "All attachments are allowed.", "", " not accepted in attachments.")
        lst(
            "badextpatterns",
            "All attachments are allowed.",
            "",
            " not accepted in attachments. (Not if line starts with !).",
        )
        chowkidar = "Any MAIL FROM exceeding spam count will be blocked by chowkidar"
        lst("spamignore", chowkidar, "", " will not be treated as spammers.")
        lst("spamignorepatterns", chowkidar, "", " will not be treated as spammers.")
        lst("spamredirect", "No spam redirection", "", " spam redirection.")
        lst("bouncemessage", "No bouncemessage defined", "", "")
        lst("doublebouncemessage", "No doublebouncemessage defined", "", "")
        lst("bouncemaxbytes", "No bouncemaxbytes defined.", "Actual Bouncemaxbytes: ", "")
        lst("dnsbllist", "No dnsbl list configured.", "List at ", " configured for dnsbl check.")
        lst("bindroutes", "No binding routes.", "Binding route: ", "")
        lst(
            "domainbindings",
            "No sender domain based local ip bindings.",
            "Sender domain local IP binding: ",
            "",
        )
        lst(
            "percenthack",
            "The percent hack is not allowed.",
            "The percent hack is allowed for user%host@",
            ".",
        )
        lst("qmqpservers", "No QMQP servers.", "QMQP server: ", ".")

        s("globalspamredirect", False, "none", "spam redirected to ")
        s("bouncefrom", False, "MAILER-DAEMON", "Bounce user name is ")
        s("bouncehost", True, "bouncehost", "Bounce host name is ")
        s("bouncesubject", False, '"failure notice"', "Bounce Subject is ")
        s("doublebouncesubject", False, '"failure notice"', "Double Bounce Subject is ")
        s("doublebouncehost", True, "doublebouncehost", "2B recipient host: ")
        s("doublebounceto", False, "postmaster", "2B recipient user: ")
        s("envnoathost", True, "envnoathost", "Presumed domain name is ")
        s("helohost", True, "helohost", "SMTP client HELO host name is ")
        s("idhost", True, "idhost", "Message-ID host name is ")
        s("localiphost", False, local_ip, "Hostname for local ip addresses ")
        s("outgoingip", False, local_ip, "Outgoingip IP address is ")
        s("plusdomain", True, "plusdomain", "Plus domain name is ")

        i("maxhops", "100", "MAX Hops is ", " hops")
        qbase = str(self.p.queue_base_env or self.p.qmailhome / "queue")
        s("queue_base", False, qbase, "Base queue directory: ")
        lst(
            "extraqueue",
            "No extra recipient.",
            "Extra recipient for queued message: '",
            "'.",
        )
        lst("domainqueue", "No Domain Queues defined.", "Domain Queues: ", "")
        i("queuelifetime", "604800", "Message lifetime in the queue is ", " seconds")
        i("maxdeliveredto", "0", "Maximum Delivered-To lines: ", "")
        i(
            "bouncelifetime",
            "604800",
            "Bounce message lifetime in the queue is ",
            " seconds (or max of queuelifetime)",
        )
        i("holdremote", "0", "Hold Remote is ", "")
        i("holdlocal", "0", "Hold Local is ", "")
        i("originipfield", "0", "X-Originating-IP header is set to ", "")

        s("srs_domain", False, "", "SRS domain name is ")
        lst("srs_secrets", "No secrets", "", "")
        i("srs_maxage", "21", "SRS maxage is ", "")
        i("srs_hashlength", "4", "SRS hashlength is ", "")
        i("srs_hashmin", "4", "SRS hashmin is ", "")
        lst("qmtproutes", "No artificial QMTP routes.", "QMTP route: ", "")
        i("databytes", "0", "SMTP DATA limit is ", " bytes")
        i("maxcmdlen", "0", "Max SMTP Command Length is ", "")
        i("timeoutconnect", "60", "SMTP client connection timeout is ", " seconds")
        i("timeoutremote", "1200", "SMTP client data timeout is ", " seconds")
        i("timeoutsmtpd", "1200", "SMTP server data timeout is ", " seconds")
        i("timeoutread", "4", "InServer Read data timeout is ", " seconds")
        i("timeoutwrite", "4", "InServer Write data timeout is ", " seconds")
        lst("etrnhosts", "No ETRN/ATRN domains.", "ETRN/ATRN domain(s): ", "")
        lst(
            "chkrcptdomains",
            "All Recipient Domains will be checked for User Status",
            "Recipient Domains checked for User Status: ",
            "",
        )
        lst("recipients", "No recipients extension defined", "recipients extension rules: ", "")
        lst(
            "authdomains",
            "Auth not reqd for mails to local domains ",
            "SMTP/IMAP/POP3 auth required for: ",
            "",
        )
        lst("relayclients", "No Relayclients defined.", "Allowed Relayclients: ", "")
        lst("relaydomains", "No Relaydomains defined.", "Allowed Relaydomains: ", "")
        lst(
            "relaymailfrom",
            "No Relaymailfrom defined.",
            "Allowed <Mail from: Relayaddresses>: ",
            "",
        )
        lst("tarpitcount", "No Tarpitcount defined.", "Actual Tarpitcount: ", "")
        lst(
            "maxrecipients",
            "No limit on number of Recipients defined.",
            "Actual Maxrecipients: ",
            "",
        )
        lst("tarpitdelay", "No Tarpitdelay defined.", "Actual Tarpitdelay: ", "")
        lst("envheaders", "No envheaders defined.", "header: ", "")
        lst("logheaders", "No logheaders defined.", "header: ", "")
        if libindimail:
            s("host.master", False, "localhost", "Master Host: ")
            s("host.cntrl", False, "localhost", "Control Host: ")
            s("host.mysql", False, "localhost", "Mysql Host: ")
            s("hostip", False, local_ip, "Host Local IP: ")
            s("hostid", False, local_id, "Host Local ID: ")
        lst("signatures", "No virus signatures defined.", "virus signatures: ", "")
        lst("bodycheck", "No Content-filters.", "Content-filters: ", "")
        lst("from.envrules", "No Sender Envrules defined.", "Sender Envrules: ", "")
        lst("rcpt.envrules", "No Recipient Envrules defined.", "Recipient Envrules: ", "")
        lst("bounce.envrules", "No Bounce Envrules defined.", "Bounce Envrules: ", "")
        i("spfbehavior", "0", "The SPF behavior is ", "")
        s("spfexp", False, "", "The SPF default explanation is: 550 ")
        s("spfguess", False, "", "The guess SPF rules are: ")
        s("spfrules", False, "", "The local SPF rules are: ")
        s("batvkey", False, "No BATV sign key", "BATV sign key: ")
        i("batvkeystale", "7", "BATV sign key stale is set to ", "")
        lst(
            "batvnosignremote",
            "Nothing defined.",
            "",
            " will be excluded for BATV signing (remote hosts).",
        )
        lst(
            "batvnosignlocals",
            "Nothing defined.",
            "",
            " will be excluded for BATV signing (local domain).",
        )
        lst(
            "nodnscheck",
            "Any MAIL FROM is checked for existing Domains.",
            "",
            " excluded for DNS checks in MAIL FROM.",
        )
        self._show_rewrite_controls(bool(libindimail), local_ip)

    def _show_rewrite_controls(self, libindimail: bool, local_ip: str) -> None:
        """Controls that this rewrite reads and the original's list omits."""
        s, i, lst = self.do_str, self.do_int, self.do_lst
        lst(
            "chksenderdomains",
            "No Sender Domains checked.",
            "Sender Domains checked for User Status: ",
            "",
        )
        if not libindimail:
            s("hostip", False, local_ip, "Host Local IP: ")
        lst("greylist.white", "No greylist whitelist.", "Greylist whitelisted: ", "")
        s("servicedir.conf", False, str(self.p.servicedir), "Service directory is ")
        s("tlsservermethod", False, "highest supported", "TLS server method is ")
        s("tlsclientmethod", False, "highest supported", "TLS client method is ")
        s("servercipherlist", False, "system default", "TLS server cipher list (TLSv1.2): ")
        s("serverciphersuite", False, "system default", "TLS server cipher suites (TLSv1.3): ")
        s("clientcipherlist", False, "system default", "TLS client cipher list (TLSv1.2): ")
        s("clientciphersuite", False, "system default", "TLS client cipher suites (TLSv1.3): ")
        lst("quarantine", "No quarantine.", "Quarantine recipient: ", "")
        lst("removeheaders", "No headers removed.", "Removed header: ", "")
        lst("mailarchive", "No mail archive rules.", "Mail archive rule: ", "")
        i("qregex", "0", "Regular expressions for address patterns is ", "")
        i("todointerval", "10", "Minimum interval between todo scans is ", " seconds")
        i("msgqueuelen", "10", "Message queue length is ", "")
        i("msgqueuesize", "81920", "Message queue size is ", " bytes")
        i("conf-fsync", "0", "fsync of queue files is ", "")
        i("conf-fdatasync", "0", "fdatasync of queue files is ", "")
        i("conf-syncdir", "0", "sync of queue directories is ", "")
        s("libmysql", False, "none", "MySQL client library: ")
        lst("procmailrc", "No procmailrc.", "procmailrc: ", "")
        self.do_envdir("global_vars", "No global variables.", "Global variable: ")

    def _morercpthosts_cdb(self) -> str:
        plain = self.controldir / "morercpthosts"
        cdb = self.controldir / "morercpthosts.cdb"
        st_plain = _stat(plain)
        st_cdb = _stat(cdb)
        if st_plain is None:
            if st_cdb is None:
                return "(Default.) No effect"
            return "Oops! morercpthosts.cdb exists but morercpthosts doesn't."
        if st_cdb is None:
            return "Oops! morercpthosts exists but morercpthosts.cdb doesn't."
        if int(st_plain.st_mtime) > int(st_cdb.st_mtime):
            return "Oops! morercpthosts.cdb is older than morercpthosts."
        return "Modified recently enough; hopefully up to date."

    def show_errors(self, names: list[str]) -> None:
        known_extra = set(_listed_in(self.p.sysconfdir))
        lines = ["------------------- begin unknown files ----------------------\n"]
        for name in names:
            if name in SKIPPED_FILES or name in KNOWN_FILES or name in known_extra:
                continue
            if name.startswith(("concurrencyl.", "concurrencyr.")):
                continue
            if any(name in (f, f + ".sql", f + ".cdb") for f in CDB_SQL_FILES):
                continue
            lines.append(f"{name}: I have no idea what this file does\n")
        lines.append("\n")
        self.out.flush()
        self.err.write("".join(lines).encode("utf-8", "surrogateescape"))
        self.err.flush()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _listed_in(sysconfdir: Path) -> list[str]:
    """Names listed in SYSCONFDIR/controlfiles.q and controlfiles.i."""
    names: list[str] = []
    for listing in ("controlfiles.q", "controlfiles.i"):
        try:
            data = (sysconfdir / listing).read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Fatal(111, f"unable to open {sysconfdir / listing}: {exc.strerror}") from None
        names += [line.rstrip("\r") for line in data.split("\n") if line]
    return names


def run(argv: list[str], out: BinaryIO, err: BinaryIO) -> int:
    try:
        opts, _args = getopt.getopt(argv[1:], "acCiqeEsv")
    except getopt.GetoptError:
        raise Fatal(100, USAGE) from None
    want = set()
    for opt, _val in opts:
        if opt == "-a":
            want |= {"c", "C", "i", "q", "e", "E", "v"}
        elif opt == "-s":
            _exec_svctool()
        else:
            want.add(opt[1])
    if not want:
        want = {"q", "i"}

    p = _paths.get()
    home = os.environ.get("HOME")
    if envdir.apply_defaultqueue(p.controldir):
        p = _paths.load()
    show = Show(p, out, err)
    if "v" in want:
        show.show_version()
    if "E" in want:
        show.show_env(home)
    if "i" in want:
        show.show_internals(home)
    if "q" in want:
        show.show_queues()
    controldir = p.controldir
    try:
        names = sorted(os.listdir(controldir))
    except OSError:
        show.put(f"Oops! Unable to chdir to {controldir}.\n")
        return 111
    if "C" in want:
        show.show_concurrency(names)
    if "c" in want:
        show.show_control()
        show.put("\n")
    if "e" in want:
        show.show_errors(names)
    return 111 if show.failed else 0


def _exec_svctool() -> None:
    p = _paths.get()
    prog = p.sbindir / "svctool"
    try:
        os.execv(prog, ["svctool", "--dumpconfig"])
    except OSError as exc:
        raise Fatal(111, f"execv: svctool: {exc.strerror}") from None


def main(argv: list[str]) -> int:
    """qmail-showctl."""
    out = sys.stdout.buffer
    try:
        code = run(argv, out, sys.stderr.buffer)
    except Fatal as exc:
        try:
            out.flush()
        except OSError:
            pass
        sys.stderr.buffer.write((FATAL + exc.message + "\n").encode("utf-8", "surrogateescape"))
        sys.stderr.buffer.flush()
        return exc.code
    out.flush()
    return code
