"""A real SMTP service for integration tests: our tcpserver running our
qmail-smtpd in-process, as the original's ``qmail-smtpd.25`` run script does.

    with SmtpService(instance, tmp_path) as svc:
        smtplib.SMTP("127.0.0.1", svc.port)

The command line is the original's::

    tcpserver -v -R -H -l mx.example.test -x rules.cdb -c 40 127.0.0.1 PORT \
        qmail-smtpd mx.example.test CHECKPW /bin/false

with ``tcpserver`` and ``qmail-smtpd`` taken from the instance's ``bin/``
(symlinks to our multicall binary), so tcpserver's forked child runs
qmail-smtpd in-process (the hot path).  ``QMAILQUEUE`` is not set: queueing
is in-process too.  The port is chosen by the kernel (port 0, ``-1`` prints
it), so tests never race for a free port.

Variants:

* ``submission=True``: qmail-smtpd decides submission semantics from
  ``TCPLOCALPORT`` (587 = no ETRN).  tcpserver sets it from the real port,
  and rule variables are applied after tcpserver's own, so the rules line
  sets ``TCPLOCALPORT="587"`` (works the same with the C tcpserver).
* ``-C`` (connections per IP) defaults to ``-c``: every test client is
  127.0.0.1, and a client that reconnects right after ``221`` can find its
  previous child not yet reaped (tcpserver's default of 20 would then refuse
  the 21st connection of a 20-session load, as the original does).
* ``smtps="env"``: ``SMTPS=1`` in qmail-smtpd's environment, qmail-smtpd
  does the handshake itself on fd 0 before the greeting.
  ``smtps="tcpserver"``: tcpserver ``-n servercert.pem`` does TLS from the
  first byte and hands the TLS session to the in-process qmail-smtpd (it
  declares ``UCSPI_TLS_AWARE``); ``TLS_PROVIDER`` is set.

Everything started is stopped by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import make_certs, make_checkpw

INDIMAIL = Path(sys.executable).parent / "indimail"
HOST = "mx.example.test"


def compile_rules(tcprules: list[str], cdb: Path, text: str, env: dict | None = None) -> Path:
    """Run ``tcprules cdb cdb.tmp`` (ours or Debian's) on ``text``."""
    res = subprocess.run(
        [*tcprules, str(cdb), str(cdb) + ".tmp"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    return cdb


class SmtpService:
    """tcpserver + in-process qmail-smtpd for ``instance`` on 127.0.0.1."""

    def __init__(
        self,
        instance,
        workdir: Path,
        *,
        rules: str = "127.:allow\n",
        rules_cdb: Path | None = None,
        submission: bool = False,
        smtps: str | None = None,
        env: dict[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
        databytes: int = 20971520,
        limit: int = 40,
        maxperip: int | None = None,
        name: str = "smtpd",
        wrap: tuple[str, ...] = (),
    ) -> None:
        self.instance = instance
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.certdir = instance.top / "etc" / "certs"
        self.ca = make_certs(self.certdir)
        self.checkpw = make_checkpw(workdir)
        if submission:
            rules = "".join(
                (line + ',TCPLOCALPORT="587"' if ":allow" in line else line) + "\n"
                for line in rules.splitlines()
            )
        if rules_cdb is None:
            rules_cdb = compile_rules(
                [str(instance.bin / "tcprules")],
                workdir / f"{name}.rules.cdb",
                rules,
                env=instance.env(),
            )
        self.rules_cdb = rules_cdb
        e = instance.env(
            DATABYTES=str(databytes),
            STARTTLS="1",
            SMTPUTF8="1",
            CERTDIR=str(self.certdir),
            HOSTNAME=HOST,
        )
        if smtps == "env":
            e["SMTPS"] = "1"
            e.pop("STARTTLS")
        elif smtps == "tcpserver":
            e.pop("STARTTLS")
        e.update(env or {})
        for k in drop_env:
            e.pop(k, None)
        e.pop("QMAILQUEUE", None)
        self.env = e
        tls = ["-n", str(self.certdir / "servercert.pem")] if smtps == "tcpserver" else []
        self.argv = [
            str(instance.bin / "tcpserver"),
            "-1",
            "-v",
            "-R",
            "-H",
            "-l",
            HOST,
            "-x",
            str(rules_cdb),
            "-c",
            str(limit),
            "-C",
            str(maxperip or limit),
            *tls,
            "127.0.0.1",
            "0",
            *wrap,  # e.g. rblsmtpd and its options, ahead of qmail-smtpd
            str(instance.bin / "qmail-smtpd"),
            HOST,
            str(self.checkpw),
            "/bin/false",
        ]
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    # ------------------------------------------------------------ running
    def start(self) -> SmtpService:
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._logf,
            env=self.env,
            cwd=str(self.workdir),
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"tcpserver did not start: {line!r}\n{self.logtext()}")
        self.port = int(line)
        return self

    def __enter__(self) -> SmtpService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def children(self) -> list[int]:
        """Pids of tcpserver's descendants (from /proc)."""
        if self.proc is None:
            return []
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        out, todo = [], [self.proc.pid]
        for _ in range(10000):
            if not todo:
                break
            pid = todo.pop()
            for k in kids.get(pid, []):
                out.append(k)
                todo.append(k)
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        kids = self.children()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 5
        for pid in kids:  # our tcpserver's own children only
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self._logf.close()
        self.proc_done = True

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def add_rcpthosts(instance, *domains: str) -> None:
    path = instance.control / "rcpthosts"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "".join(d + "\n" for d in domains), encoding="utf-8")


def session(port: int, source: str, rcpt: str) -> list[str]:
    """HELO, MAIL, RCPT ``rcpt``, QUIT from ``source``; the reply lines."""
    out: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        line = f.readline().decode()
        out.append(line.rstrip())
        if not line:
            return out
        for cmd in ("HELO client.test", "MAIL FROM:<a@example.org>", f"RCPT TO:<{rcpt}>", "QUIT"):
            s.sendall(cmd.encode() + b"\r\n")
            out.append(f.readline().decode().rstrip())
        assert f.readline() == b""  # the server closed the connection after 221
    return out


def served_by(svc: SmtpService, n: int, timeout: float = 10) -> list[int]:
    """Pids of the first ``n`` sessions (``tcpserver: pid N from IP``), once
    the listener has logged each one's end (``sigchild, pid=N``)."""
    deadline = time.monotonic() + timeout
    while True:
        text = svc.logtext()
        pids = [int(p) for p in re.findall(r"tcpserver: pid (\d+) from ", text)]
        ends = re.findall(r"sigchild, pid=(\d+)", text)
        if len(pids) >= n and len(ends) >= n:
            return pids[:n]
        assert time.monotonic() < deadline, text
        time.sleep(0.02)
