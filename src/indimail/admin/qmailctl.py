"""qmailctl: control the supervised indimail-mta services (admin.md §6).

    qmailctl start|stop|restart|condrestart|shut|kill|rotate|flush|reload|
             status|stat|queue|pause|cont|cdb|help

The services are those of SERVICEDIR (``control/servicedir.conf``, else
the paths module): listeners ``qmail-smtpd.*``, ``qmail-qmtpd.*``,
``qmail-qmqpd.*`` and senders ``qmail-send.*``.  ``svc``/``svstat`` run in
this process (they are ours), so no extra interpreter starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
import time
from pathlib import Path

from indimail.admin import svc_boot
from indimail.core import paths as _paths
from indimail.core.errors import Fatal, UsageError

LISTENERS = ("qmail-smtpd.", "qmail-qmtpd.", "qmail-qmqpd.")
SENDERS = ("qmail-send.",)
COMMANDS = (
    "start",
    "stop",
    "restart",
    "condrestart",
    "shut",
    "kill",
    "rotate",
    "flush",
    "reload",
    "status",
    "stat",
    "queue",
    "pause",
    "cont",
    "cdb",
    "help",
)
HELP = """\
   stop -- stops mail service (smtp connections refused, nothing goes out)
  start -- starts mail service (smtp connection accepted, mail can go out)
  pause -- temporarily stops mail service (connections accepted, nothing leaves)
   cont -- continues paused mail service
   stat -- displays status of mail service
 status -- same as stat
    cdb -- rebuild the tcpserver cdb files for smtp, qmtp and qmqp
restart -- stops and restarts smtp, sends qmail-send a TERM & restarts it
condrestart -- like restart, but only services that run
  flush -- sends qmail-send an ALRM, scheduling queued messages for delivery
 reload -- sends qmail-send a HUP, rereading locals and virtualdomains
  queue -- shows status of queue
 rotate -- tells multilog to rotate the current log files
   kill -- sends a KILL to every service
   shut -- stops every service and svscan
   help -- this screen
"""


def servicedir(p: _paths.Paths) -> Path:
    conf = p.controldir / "servicedir.conf"
    with contextlib.suppress(OSError):
        first = conf.read_text().splitlines()[0].strip()
        if first:
            return Path(first)
    return p.servicedir


def services(sdir: Path, prefixes: tuple[str, ...]) -> list[Path]:
    try:
        names = sorted(os.listdir(sdir))
    except OSError:
        return []
    return [sdir / n for n in names if n.startswith(prefixes) and (sdir / n).is_dir()]


def all_services(sdir: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(sdir))
    except OSError:
        return []
    return [sdir / n for n in names if not n.startswith(".") and (sdir / n / "run").exists()]


def _svc(flag: str, dirs: list[Path]) -> int:
    if not dirs:
        return 0
    from indimail.daemontools import svctl

    try:
        return svctl.svc(["svc", flag, *map(str, dirs)])
    except Fatal as exc:
        sys.stderr.write(f"qmailctl: svc: {exc.message}\n")
        return exc.code


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def svscan_pid(p: _paths.Paths, sdir: Path) -> int | None:
    """pid of the running svscan, from RUNDIR/svscan or the scan dir."""
    for pidfile in (svc_boot.pidfile(p), sdir / svc_boot.PIDFILE_NAME):
        try:
            data = pidfile.read_bytes()
        except OSError:
            continue
        if len(data) < 4:
            continue
        pid = struct.unpack("=i", data[:4])[0]
        if pid <= 0:
            continue
        if _alive(pid):
            return pid
    return None


def stat(p: _paths.Paths, sdir: Path) -> int:
    from indimail.daemontools import svctl

    pid = svscan_pid(p, sdir)
    _say(f"svscan: {f'up (pid {pid})' if pid else 'not running'}\n")
    code = 0
    for d in all_services(sdir):
        for target in (d, d / "log"):
            if target == d / "log" and not (target / "run").exists():
                continue
            line, rc = svctl.svstat_line(str(target))
            if line is not None:
                _say(line + "\n")
            code = code or rc
    return code


def cdb(p: _paths.Paths) -> int:
    from indimail.admin.svc_config import tcprules_compile

    tcp = p.sysconfdir / "tcp"
    code = 0
    try:
        rules = sorted(
            f for f in tcp.iterdir() if f.name.startswith("tcp.") and "." not in f.name[4:]
        )
    except OSError as exc:
        raise Fatal(111, f"unable to read {tcp}: {exc.strerror}") from None
    for f in rules:
        target = f.with_name(f.name + ".cdb")
        try:
            tcprules_compile(f, target)
            os.chmod(target, 0o664)
            _say(f"{target}: rebuilt\n")
        except Fatal as exc:
            sys.stderr.write(f"qmailctl: {exc.message}\n")
            code = exc.code
    return code


def queue(p: _paths.Paths) -> int:
    from indimail.cli import run

    code = run("qmail-qstat", ["qmail-qstat"])
    sys.stdout.flush()
    return code or run("qmail-qread", ["qmail-qread", "-c"])


def shut(p: _paths.Paths, sdir: Path) -> int:
    # every service, not only mail's: svscan going away must not leave
    # orphans (qmail-queued, anything the admin added)
    everything = [d for d in services(sdir, ("",)) if not d.name.startswith(".")]
    _svc("-d", everything)
    pid = svscan_pid(p, sdir)
    if pid is None:
        _say("svscan is not running\n")
        return 0
    _say(f"stopping svscan (pid {pid}) and every service\n")
    os.kill(pid, signal.SIGTERM)
    for _ in range(150):
        if not _alive(pid):
            return 0
        time.sleep(0.2)
    sys.stderr.write(f"qmailctl: svscan (pid {pid}) did not exit\n")
    return 111


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise UsageError(f"usage: qmailctl {{{'|'.join(COMMANDS)}}}")
    cmd = argv[1]
    p = _paths.get()
    sdir = servicedir(p)
    listeners = services(sdir, LISTENERS)
    senders = services(sdir, SENDERS)
    if cmd == "help":
        _say(HELP)
        return 0
    if cmd in ("stat", "status"):
        return stat(p, sdir)
    if cmd == "cdb":
        return cdb(p)
    if cmd == "queue":
        return queue(p)
    if cmd == "shut":
        return shut(p, sdir)
    if cmd == "start":
        _say("Starting indimail-mta services\n")
        if svscan_pid(p, sdir) is None:
            sys.stderr.write(
                "qmailctl: warning: svscan is not running (start it with "
                "'systemctl start svscan' or '/etc/init.d/svscan start')\n"
            )
        return _svc("-u", senders + listeners)
    if cmd == "stop":
        _say("Stopping indimail-mta services\n")
        return _svc("-d", listeners + senders)
    if cmd == "restart":
        _say("Restarting indimail-mta services\n")
        _svc("-d", listeners)
        _svc("-t", senders)
        _svc("-u", senders)
        return _svc("-u", listeners)
    if cmd == "condrestart":
        _svc("-d", listeners)
        _svc("-t", senders)
        return _svc("-u", listeners)
    if cmd == "kill":
        return _svc("-k", listeners + senders)
    if cmd == "rotate":
        logs = [d / "log" for d in all_services(sdir) if (d / "log" / "run").exists()]
        return _svc("-a", logs)
    if cmd == "flush":
        from indimail.cli import run

        run("qmail-tcpok", ["qmail-tcpok"])
        return _svc("-a", senders)
    if cmd == "reload":
        return _svc("-h", senders)
    if cmd == "pause":
        return _svc("-p", listeners + senders)
    if cmd == "cont":
        return _svc("-c", listeners + senders)
    raise UsageError(f"usage: qmailctl {{{'|'.join(COMMANDS)}}}")
