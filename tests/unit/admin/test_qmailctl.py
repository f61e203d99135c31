"""qmailctl against a rootless instance's service set, run by svscan."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from indimail.cli import COMMANDS
from support import Instance, make_instance


def test_usage(instance: Instance) -> None:
    res = instance.run("qmailctl", "bogus")
    assert res.returncode == 100 and b"usage: qmailctl" in res.stderr
    res = instance.run("qmailctl", "help")
    assert res.returncode == 0 and b"flush" in res.stdout


def test_cdb_rebuilds_rules(instance: Instance) -> None:
    tcp = instance.top / "etc" / "tcp"
    (tcp / "tcp.smtp").write_text('127.:allow,RELAYCLIENT=""\n:allow\n')
    res = instance.run("qmailctl", "cdb")
    assert res.returncode == 0, res.stderr
    assert (tcp / "tcp.smtp.cdb").stat().st_mode & 0o777 == 0o664
    from indimail.core.cdb import Reader

    with Reader(str(tcp / "tcp.smtp.cdb")) as r:
        assert r.get(b"127.") == b"+RELAYCLIENT=\0"


def test_stat_start_stop_and_mail_flow(tmp_path) -> None:
    missing = [
        c
        for c in ("svscan", "svc", "svstat", "multilog", "envdir", "softlimit")
        if c not in COMMANDS
    ]
    if missing:
        pytest.skip(f"not in this build yet: {missing}")
    inst = make_instance(tmp_path / "inst", queues=2)
    res = inst.run("create_services", "--port-offset=21000", "--hostname=mx.example.test")
    assert res.returncode == 0, res.stderr.decode()
    sdir = inst.top / "service"
    listeners_work = "tcpserver" in COMMANDS and "qmail-smtpd" in COMMANDS
    if not listeners_work:
        # only the delivery service can run: keep the listeners down
        for name in os.listdir(sdir):
            if name.startswith(("qmail-smtpd.", "qmail-qmtpd.", "qmail-qmqpd.")):
                (sdir / name / "down").touch()
    proc = subprocess.Popen(
        [str(inst.bin / "svscan"), str(sdir)],
        env=inst.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # svscan starts the services one after another (qmail-smtpd last):
        # wait until every one of them is up, not just the first
        wanted = ["svscan: up", "qmail-send.25: up", "qmail-queued: up"]
        if listeners_work:
            wanted.append("qmail-smtpd.21025: up")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = inst.run("qmailctl", "stat").stdout.decode()
            if all(w in out for w in wanted):
                break
            time.sleep(0.3)
        for w in wanted:
            assert w in out, out
        msg = b"To: postmaster@mx.example.test\nSubject: through services\n\nhi\n"
        assert inst.run("sendmail", "-t", input=msg).returncode == 0
        new = inst.top / "var" / "alias" / "Maildir" / "new"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(new.iterdir()):
            time.sleep(0.2)
        assert list(new.iterdir()), inst.run("qmailctl", "queue").stdout.decode()
        assert inst.run("qmailctl", "stop").returncode == 0
        time.sleep(1)
        out = inst.run("qmailctl", "stat").stdout.decode()
        assert "qmail-send.25: down" in out, out
        assert inst.run("qmailctl", "start").returncode == 0
        assert inst.run("qmailctl", "shut").returncode == 0
        proc.wait(timeout=30)
        time.sleep(0.5)
        left = [
            pid for pid in os.listdir("/proc") if pid.isdigit() and str(inst.top) in _cmdline(pid)
        ]
        assert not left, [_cmdline(pid) for pid in left]
    finally:
        if proc.poll() is None:
            inst.run("qmailctl", "shut")  # every service, then svscan
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_builtin_rules_compiler_matches_tcprules_format(tmp_path) -> None:
    from unittest import mock

    from indimail.admin import svc_config
    from indimail.core.cdb import Reader

    rules = tmp_path / "tcp.test"
    rules.write_text('127.:allow,RELAYCLIENT="",X=1\n10.:deny\n')
    with mock.patch.object(svc_config, "have_command", lambda name: False):
        svc_config.tcprules_compile(rules, tmp_path / "tcp.test.cdb")
    with Reader(str(tmp_path / "tcp.test.cdb")) as r:
        assert r.get(b"127.") == b"+RELAYCLIENT=\0+X=1\0"
        assert r.get(b"10.") == b"D"
