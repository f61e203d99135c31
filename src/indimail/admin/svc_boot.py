"""Boot integration files for svscan, generated from one set of paths.

The same texts serve ``svctool --config=add-boot`` on a running system and
the packaging scripts (``packaging/build.py``), which write them into the
package trees; so a packaged system and a hand-installed one start svscan
the same way:

* ``svscanboot``            LIBEXECDIR/svscanboot: what every boot method runs
* ``svscan.service``        systemd unit (+ an override example)
* ``svscan.init``           SysV / LSB init script (Debian's fallback without systemd)
* ``svscan.openrc``         OpenRC service script (Alpine)
* ``svscan.rcd``            FreeBSD rc.d script
* ``org.indimail.svscan.plist``  macOS launchd job
"""

from __future__ import annotations

import plistlib
from pathlib import Path

from indimail.core import paths as _paths

UNIT = "svscan.service"
UNIT_ALIASES = ("indimail.service", "indimail-mta.service")
LAUNCHD_LABEL = "org.indimail.svscan"
PIDFILE_NAME = ".svscan.pid"


def pidfile(p: _paths.Paths) -> Path:
    """Where svscan keeps its pid (RUNDIR/svscan/.svscan.pid)."""
    return p.rundir / "svscan" / PIDFILE_NAME


def svscanboot(p: _paths.Paths) -> str:
    """LIBEXECDIR/svscanboot [SERVICEDIR]: start svscan on the service dir.

    Leftover supervisors of a previous run are told to exit first; svscan's
    own errors go to readproctitle (visible in ``ps``) unless the service
    dir holds an ``.svscan/log`` service.  TERMINATE_SESSION makes a
    stopped svscan take its services down with it (package stop/purge).
    """
    return f"""#!/bin/sh
# svscanboot: start svscan on the service directory (indimail-mta).
# Usage: svscanboot [servicedir]
PATH={p.bindir}:{p.sbindir}:/bin:/usr/bin:/sbin:/usr/sbin
export PATH
if [ $# -ge 1 ] ; then
\tSERVICEDIR=$1
elif [ -s {p.controldir}/servicedir.conf ] ; then
\tSERVICEDIR=$(head -n 1 {p.controldir}/servicedir.conf)
else
\tSERVICEDIR={p.servicedir}
fi
cd / || exit 111
exec </dev/null
[ -n "$TERMINATE_SESSION" ] || TERMINATE_SESSION=1
export TERMINATE_SESSION
[ -n "$SCANINTERVAL" ] || SCANINTERVAL=60
export SCANINTERVAL
for d in "$SERVICEDIR"/* "$SERVICEDIR"/*/log ; do
\t[ -d "$d/supervise" ] && svc -dx "$d" 2>/dev/null
done
VARIABLES=$SERVICEDIR/.svscan/variables
if [ -d "$VARIABLES" ] ; then
\tset -- envdir "$VARIABLES" svscan "$SERVICEDIR"
else
\tset -- svscan "$SERVICEDIR"
fi
if [ -d "$SERVICEDIR/.svscan/log" ] ; then
\texec "$@"
fi
exec "$@" 2>&1 | readproctitle "$SERVICEDIR" errors: \
{"." * 400}
"""


def systemd_unit(p: _paths.Paths) -> str:
    return f"""[Unit]
Description=indimail-mta: svscan supervising the mail services in {p.servicedir}
Documentation=man:svscan(8) man:qmailctl(8)
After=local-fs.target network.target
Wants=network.target

[Service]
Type=simple
ExecStart={p.libexecdir}/svscanboot {p.servicedir}
ExecStop={p.bindir}/qmailctl stop
Restart=on-failure
RestartSec=10
KillMode=mixed
TimeoutStopSec=30

[Install]
Alias={" ".join(UNIT_ALIASES)}
WantedBy=multi-user.target
"""


def systemd_override(p: _paths.Paths) -> str:
    return f"""# Example drop-in: copy to /etc/systemd/system/svscan.service.d/override.conf,
# edit, then run "systemctl daemon-reload".
[Service]
# Scan {p.servicedir} for new services every 60 seconds instead of 120
#Environment=SCANINTERVAL=60
# Start more services than the default limit of 1000
#Environment=MAXSERVICES=2000
"""


def sysv_init(p: _paths.Paths) -> str:
    """LSB init script: start/stop/restart/status, sh-compatible."""
    pid = pidfile(p)
    return f"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          svscan mail-transport-agent
# Required-Start:    $local_fs $network $remote_fs
# Required-Stop:     $local_fs $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: indimail-mta services (svscan)
# Description:       Starts svscan, which supervises the indimail-mta
#                    services in {p.servicedir} (SMTP, delivery, QMTP, QMQP).
### END INIT INFO

PATH={p.bindir}:/bin:/usr/bin:/sbin:/usr/sbin
SVSCANBOOT={p.libexecdir}/svscanboot
SERVICEDIR={p.servicedir}
PIDFILE={pid}
[ -x "$SVSCANBOOT" ] || exit 0

running() {{
\t[ -s "$PIDFILE" ] || return 1
\tpid=$(od -An -t d4 -N 4 "$PIDFILE" 2>/dev/null | tr -d ' ')
\t[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}}

do_start() {{
\tif running ; then
\t\techo "svscan is already running (pid $pid)"
\t\treturn 0
\tfi
\techo "Starting svscan on $SERVICEDIR"
\tif command -v setsid >/dev/null 2>&1 ; then
\t\tsetsid "$SVSCANBOOT" "$SERVICEDIR" </dev/null >/dev/null 2>&1 &
\telse
\t\t"$SVSCANBOOT" "$SERVICEDIR" </dev/null >/dev/null 2>&1 &
\tfi
\ti=0
\twhile [ $i -lt 50 ] ; do
\t\trunning && return 0
\t\tsleep 0.2 2>/dev/null || sleep 1
\t\ti=$((i + 1))
\tdone
\techo "svscan did not start" >&2
\treturn 1
}}

do_stop() {{
\tif ! running ; then
\t\techo "svscan is not running"
\t\treturn 0
\tfi
\techo "Stopping svscan (pid $pid) and its services"
\tqmailctl stop >/dev/null 2>&1
\tkill -TERM "$pid" 2>/dev/null
\ti=0
\twhile [ $i -lt 100 ] ; do
\t\tkill -0 "$pid" 2>/dev/null || return 0
\t\tsleep 0.2 2>/dev/null || sleep 1
\t\ti=$((i + 1))
\tdone
\techo "svscan (pid $pid) did not exit" >&2
\treturn 1
}}

case "$1" in
start) do_start ;;
stop) do_stop ;;
restart|force-reload) do_stop && do_start ;;
reload) qmailctl reload ;;
status)
\tif running ; then
\t\techo "svscan is running (pid $pid)"
\t\tqmailctl stat
\t\texit 0
\tfi
\techo "svscan is not running"
\texit 3
\t;;
*) echo "Usage: $0 {{start|stop|restart|force-reload|reload|status}}" >&2 ; exit 2 ;;
esac
"""


def openrc(p: _paths.Paths) -> str:
    return f"""#!/sbin/openrc-run
# indimail-mta: svscan supervising {p.servicedir}
description="indimail-mta services (svscan)"
command="{p.libexecdir}/svscanboot"
command_args="{p.servicedir}"
command_background=true
pidfile="/run/svscan-openrc.pid"

depend() {{
\tneed localmount net
\tprovide mta
}}

stop_pre() {{
\t{p.bindir}/qmailctl stop >/dev/null 2>&1
\treturn 0
}}
"""


def freebsd_rcd(p: _paths.Paths) -> str:
    """rc.d script (``svscan_enable``); extra commands go to qmailctl."""
    pid = pidfile(p)
    return f"""#!/bin/sh
#
# PROVIDE: svscan mail
# REQUIRE: LOGIN NETWORKING
# KEYWORD: shutdown
#
# Add to /etc/rc.conf to start the indimail-mta services at boot:
#   svscan_enable="YES"
#

. /etc/rc.subr

name="svscan"
rcvar="svscan_enable"
load_rc_config $name
: ${{svscan_enable:="NO"}}
: ${{svscan_servicedir:="{p.servicedir}"}}

pidfile="{pid}"
procname="svscan"
command="/usr/sbin/daemon"
command_args="-f {p.libexecdir}/svscanboot ${{svscan_servicedir}}"
stop_precmd="svscan_prestop"
extra_commands="reload stat queue cdb flush"
reload_cmd="{p.bindir}/qmailctl reload"
stat_cmd="{p.bindir}/qmailctl stat"
queue_cmd="{p.bindir}/qmailctl queue"
cdb_cmd="{p.bindir}/qmailctl cdb"
flush_cmd="{p.bindir}/qmailctl flush"

svscan_prestop()
{{
\t{p.bindir}/qmailctl stop >/dev/null 2>&1
\treturn 0
}}

run_rc_command "$1"
"""


def launchd_plist(p: _paths.Paths) -> str:
    data = {
        "Label": LAUNCHD_LABEL,
        "Disabled": False,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "Program": f"{p.libexecdir}/svscanboot",
        "ProgramArguments": [f"{p.libexecdir}/svscanboot", str(p.servicedir)],
        "WorkingDirectory": str(p.servicedir),
        "EnvironmentVariables": {"SCANINTERVAL": "120"},
        "StandardErrorPath": f"{p.logdir}/svscan.err",
    }
    return plistlib.dumps(data, sort_keys=False).decode()


def boot_files(p: _paths.Paths) -> dict[str, tuple[str, int]]:
    """name -> (text, mode) of every boot file, as kept in SHAREDDIR/boot."""
    return {
        "svscanboot": (svscanboot(p), 0o755),
        "systemd": (systemd_unit(p), 0o644),
        "systemd.override.conf": (systemd_override(p), 0o644),
        "svscan.init": (sysv_init(p), 0o755),
        "openrc": (openrc(p), 0o755),
        "svscan.rcd": (freebsd_rcd(p), 0o755),
        "svscan.plist": (launchd_plist(p), 0o644),
    }
