"""Start the demo MTA: a rootless instance with its delivery running.

Used by ``nox -s demo``.  Creates (or refreshes) the instance, starts
``qscheduler -s`` detached (pid in DIR/run/qscheduler.pid, log in
DIR/log/deliver.log), sends one message with the instance's sendmail and
waits until it is in the user's Maildir.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    top = Path(sys.argv[1]).resolve()
    bindir = Path(sys.executable).parent
    force = ["-f"] if (top / "indimail-paths.conf").exists() else []
    subprocess.run([str(bindir / "indimail"), "indimail-instance", *force, str(top)], check=True)
    env = dict(os.environ, INDIMAIL_PATHS=str(top / "indimail-paths.conf"))
    pidfile = top / "run" / "qscheduler.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(1)
        except (ProcessLookupError, ValueError):
            pass
    with open(top / "log" / "deliver.log", "ab") as log:
        proc = subprocess.Popen(
            [str(top / "bin" / "qscheduler"), "-s", "./Maildir/"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=top,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    maildir = top / "home" / user / "Maildir" / "new"
    before = set(maildir.iterdir())
    msg = f"To: {user}\nSubject: demo\n\nHello from the indimail-mta demo.\n".encode()
    subprocess.run([str(top / "bin" / "sendmail"), "-t"], input=msg, env=env, check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(maildir.iterdir()) == before:
        time.sleep(0.2)
    new = sorted(set(maildir.iterdir()) - before)
    if not new:
        print(f"the demo message was not delivered; see {top}/log/deliver.log")
        return 1
    print(f"delivered: {new[0]}")
    print(f"delivery is running (pid {proc.pid}); log: {top}/log/deliver.log")
    print(f"use the instance:  . {top}/env   (sendmail, qmail-qread, qmail-showctl ...)")
    print(f"stop it:           kill {proc.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
