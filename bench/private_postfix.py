"""A private Postfix for tests and benchmarks: own config, queue and data
dirs, smtpd on 127.0.0.1:<free port>, ``virtual`` delivery for one domain
into ``mail/<box>/Maildir/``.  Used by bench/run.py and by
tests/integration/test_delivery_peers.py (one copy of what it takes).

What it takes on a machine without systemd or syslog (Postfix must start
as root):

* the config dir is a sibling of the queue dir, not its parent:
  ``postfix start`` checks that everything under config_directory is owned
  by root;
* ``data_directory`` is owned by postfix (master.lock lives there);
* every service runs with chroot = n: a fresh queue dir has none of the
  files a chroot needs;
* the top dir must be world-traversable (pytest's temp dirs are 0700), as
  the daemons run as postfix and ``virtual`` writes as nobody;
* ``maillog_file_prefixes`` must allow the log file outside /var;
* the ``smtp inet`` service is commented out and smtpd listens only on
  ``127.0.0.1:<port>``; ``postfix -c DIR start|stop``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class PostfixMissing(RuntimeError):
    """Postfix (Debian package ``postfix``) is not installed."""


def _template(name: str, pristine: str) -> str:
    """The package's pristine file (the machine's own configuration does not
    matter), else the one in /etc/postfix."""
    for path in (f"/usr/share/postfix/{pristine}", f"/etc/postfix/{name}"):
        if os.path.exists(path):
            return path
    raise PostfixMissing(f"no {name} template (apt-get install postfix)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostfix:
    def __init__(
        self,
        top: Path,
        domain: str,
        boxes: list[str],
        *,
        hostname: str = "peer-mx.test",
        settings: dict[str, object] | None = None,
    ) -> None:
        for prog in ("postfix", "postconf"):
            if shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
                raise PostfixMissing(f"{prog} not installed (apt-get install postfix)")
        self.top = top
        self.conf, self.spool = top / "conf", top / "spool"
        self.data, self.mail = top / "data", top / "mail"
        self.log = top / "maillog"
        self.port = free_port()
        for d in (self.conf, self.spool, self.data, self.mail):
            d.mkdir(parents=True)
        shutil.copy(_template("main.cf", "main.cf.debian"), self.conf / "main.cf")
        shutil.copy(_template("master.cf", "master.cf.dist"), self.conf / "master.cf")
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        if os.getuid() == 0:
            os.chown(self.mail, self.uid, self.gid)
            os.chown(self.data, pwd.getpwnam("postfix").pw_uid, -1)
        (self.conf / "vmailbox").write_text(
            "".join(f"{box}@{domain} {box}/Maildir/\n" for box in boxes)
        )
        base: dict[str, object] = {
            "queue_directory": self.spool,
            "data_directory": self.data,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": hostname,
            "mydestination": "localhost",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "maillog_file": self.log,
            "maillog_file_prefixes": top,
            "virtual_mailbox_domains": domain,
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": f"texthash:{self.conf / 'vmailbox'}",
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "default_transport": "error",
            "relay_transport": "error",
            **(settings or {}),
        }
        self.postconf("-e", *(f"{k}={v}" for k, v in base.items()))
        # no chroot (the queue dir is a temp dir), smtpd only on our port
        self.postconf("-F", "*/*/chroot = n")
        self.postconf("-M#", "smtp/inet")
        spec = f"127.0.0.1:{self.port}"
        self.postconf("-Me", f"{spec}/inet={spec} inet n - n - - smtpd")

    def env(self) -> dict[str, str]:
        """Environment for postfix commands and /usr/sbin/sendmail."""
        return {"PATH": "/usr/sbin:/usr/bin:/bin", "MAIL_CONFIG": str(self.conf)}

    def postconf(self, *args: str) -> None:
        res = subprocess.run(
            ["postconf", "-c", str(self.conf), *args],
            capture_output=True,
            timeout=30,
            env=self.env(),
        )
        if res.returncode != 0:
            raise RuntimeError(f"postconf {' '.join(args)}: {res.stderr.decode()}")

    def start(self) -> None:
        res = subprocess.run(
            ["postfix", "-c", str(self.conf), "start"],
            capture_output=True,
            timeout=60,
            env=self.env(),
        )
        if res.returncode != 0:
            raise RuntimeError(f"postfix start: {res.stderr.decode()}{self.maillog()}")

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queue_empty(self) -> bool:
        return all(
            not any(os.scandir(self.spool / d)) if (self.spool / d).is_dir() else True
            for d in ("maildrop", "incoming", "active", "deferred")
        )

    def stop(self) -> None:
        pid = self.master_pid()
        subprocess.run(
            ["postfix", "-c", str(self.conf), "stop"],
            capture_output=True,
            timeout=60,
            env=self.env(),
        )
        if pid is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.1)
        if os.path.exists(f"/proc/{pid}"):  # still there: by its pid, not by name
            os.kill(pid, signal.SIGKILL)

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def delivered(self, box: str) -> list[Path]:
        new = self.mail / box / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []
