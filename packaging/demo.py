"""Start the demo MTA: a rootless instance receiving and delivering mail.

Used by ``nox -s demo``.  Creates (or refreshes) the instance, starts
``qscheduler -s`` (delivery) and ``tcpserver ... qmail-smtpd`` on
127.0.0.1 port 2525 (or DEMO_SMTP_PORT), both detached (pids in
DIR/run/*.pid, logs in DIR/log/), then sends one message with the
instance's sendmail and one over SMTP and waits until both are in the
user's Maildir.
"""

from __future__ import annotations

import os
import pwd
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path


def stop_previous(top: Path) -> None:
    for name in ("qscheduler", "tcpserver"):
        pidfile = top / "run" / f"{name}.pid"
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(1)
        except (OSError, ValueError):
            pass


def start(top: Path, name: str, argv: list[str], env: dict[str, str]) -> int:
    with open(top / "log" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=top, start_new_session=True
        )
    (top / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def main() -> int:
    top = Path(sys.argv[1]).resolve()
    port = int(os.environ.get("DEMO_SMTP_PORT") or 2525)
    bindir = Path(sys.executable).parent
    force = ["-f"] if (top / "indimail-paths.conf").exists() else []
    if force:
        stop_previous(top)
    subprocess.run([str(bindir / "indimail"), "indimail-instance", *force, str(top)], check=True)
    env = dict(os.environ, INDIMAIL_PATHS=str(top / "indimail-paths.conf"))
    fqdn = (top / "etc" / "control" / "me").read_text().strip()
    rules = top / "etc" / "tcp" / "tcp.smtp"
    rules.write_text('127.:allow,RELAYCLIENT=""\n:allow\n')
    with open(rules, "rb") as fh:
        subprocess.run(
            [str(top / "bin" / "tcprules"), f"{rules}.cdb", f"{rules}.tmp"],
            stdin=fh,
            env=env,
            check=True,
        )
    deliver = start(top, "qscheduler", [str(top / "bin" / "qscheduler"), "-s", "./Maildir/"], env)
    smtpd = start(
        top,
        "tcpserver",
        [
            str(top / "bin" / "tcpserver"),
            "-v",
            "-R",
            "-H",
            "-l",
            fqdn,
            "-x",
            f"{rules}.cdb",
            "-c",
            "40",
            "127.0.0.1",
            str(port),
            str(top / "bin" / "qmail-smtpd"),
        ],
        env,
    )

    user = pwd.getpwuid(os.getuid()).pw_name
    maildir = top / "home" / user / "Maildir" / "new"
    before = set(maildir.iterdir())
    msg = f"To: {user}\nSubject: demo\n\nHello from the indimail-mta demo.\n".encode()
    subprocess.run([str(top / "bin" / "sendmail"), "-t"], input=msg, env=env, check=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail(
                    f"{user}@{fqdn}",
                    [f"{user}@{fqdn}"],
                    b"Subject: demo over SMTP\r\n\r\nHello over SMTP.\r\n",
                )
            break
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > deadline:
                print(f"could not talk SMTP to 127.0.0.1:{port}; see {top}/log/tcpserver.log")
                return 1
            time.sleep(0.3)
    while time.monotonic() < deadline and len(set(maildir.iterdir()) - before) < 2:
        time.sleep(0.2)
    new = sorted(set(maildir.iterdir()) - before)
    if len(new) < 2:
        print(f"the demo messages were not delivered; see {top}/log/qscheduler.log")
        return 1
    for path in new:
        print(f"delivered: {path}")
    print(f"SMTP on 127.0.0.1:{port} (pid {smtpd}), delivery (pid {deliver}); logs: {top}/log")
    print(f"use the instance:  . {top}/env   (sendmail, qmail-qread, qmail-showctl ...)")
    print(f"stop it:           kill {smtpd} {deliver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
