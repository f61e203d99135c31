"""rblsmtpd against a DNS server on loopback, standalone and under tcpserver."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from smtp_service import SmtpService, served_by, session

INDIMAIL = Path(sys.executable).parent / "indimail"
HARNESS = Path(__file__).parent.parent / "unit/deliver/remote_cases/remote_harness.py"


def _dns_server_class():
    spec = importlib.util.spec_from_file_location("remote_harness_for_rbl", HARNESS)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.DnsServer


RECORDS = {
    ("2.0.0.127.bl.test", "TXT"): ['"listed at bl.test"'],
    ("2.0.0.127.abl.test", "A"): ["127.0.0.2"],
    ("3.0.0.127.ok.test", "A"): ["127.0.0.2"],
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test", "TXT"): [
        '"v6 listed"'
    ],
}


@pytest.fixture(scope="module")
def dnsd():
    server = _dns_server_class()(RECORDS).start()
    yield server
    server.stop()


def run(dnsd, ip: str, args: list[str], session: bytes, **extra: str):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DNSCACHEIP": dnsd.address,
        "DNSTIMEOUT": "3",
        "TCPREMOTEIP": ip,
        **extra,
    }
    return subprocess.run(
        [str(INDIMAIL), "rblsmtpd", *args],
        input=session,
        capture_output=True,
        env=env,
        timeout=30,
    )


SESSION = b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nQUIT\r\n"


def test_listed_client_gets_451(dnsd) -> None:
    res = run(dnsd, "127.0.0.2", ["-r", "bl.test", "echo", "passed"], SESSION)
    assert res.returncode == 0
    assert res.stdout.decode().split("\r\n") == [
        "220 rblsmtpd.indimail",
        "250 rblsmtpd.indimail",
        "250 rblsmtpd.indimail",
        "451 listed at bl.test",
        "451 listed at bl.test",
        "221 rblsmtpd.indimail",
        "",
    ]
    err = res.stderr.decode()
    assert err.startswith("rblsmtpd:  pid ")
    assert " from 127.0.0.2: 451 listed at bl.test\n" in err and "Recipient <d@e.f>" in err


def test_b_flag_gives_553_and_altreply(dnsd) -> None:
    res = run(dnsd, "127.0.0.2", ["-b", "-r", "bl.test", "echo", "passed"], b"RCPT TO:<x@y>\r\n")
    assert b"553 listed at bl.test\r\n" in res.stdout
    res = run(dnsd, "127.0.0.2", ["-r", "abl.test:go away %IP%", "echo", "passed"], b"QUIT\r\n")
    assert res.stdout.startswith(b"220 ")
    res = run(dnsd, "127.0.0.2", ["-t", "0", "-r", "abl.test:go away %IP%", "echo", "x"], b"")
    assert res.stdout == b"451 go away 127.0.0.2\r\n"


def test_ipv6_listed(dnsd) -> None:
    res = run(dnsd, "2001:db8::1", ["-t", "0", "-r", "bl.test", "echo", "x"], b"", PROTO="TCP6")
    assert res.stdout == b"451 v6 listed\r\n"


def test_unlisted_or_antirbl_runs_next_program(dnsd) -> None:
    res = run(dnsd, "127.0.0.3", ["-r", "bl.test", "echo", "passed"], b"")
    assert res.stdout == b"passed\n"
    res = run(dnsd, "127.0.0.3", ["-a", "ok.test", "-r", "bl.test", "echo", "passed"], b"")
    assert res.stdout == b"passed\n"


def test_rblsmtpd_env(dnsd) -> None:
    res = run(dnsd, "127.0.0.2", ["-r", "bl.test", "echo", "passed"], b"", RBLSMTPD="")
    assert res.stdout == b"passed\n"
    res = run(
        dnsd,
        "127.0.0.9",
        ["-t", "0", "-r", "bl.test", "echo", "x"],
        b"",
        RBLSMTPD="-no mail from %IP%",
    )
    assert res.stdout == b"553 no mail from 127.0.0.9\r\n"
    res = run(dnsd, "127.0.0.9", ["-t", "0", "-r", "bl.test", "echo", "x"], b"", RBLSMTPD="busy")
    assert res.stdout == b"451 busy\r\n"


def test_dns_failure_fail_open_and_closed(tmp_path) -> None:
    # a port where nothing answers: every lookup times out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = type("D", (), {"address": f"127.0.0.1:{s.getsockname()[1]}"})()
        res = run(dead, "127.0.0.2", ["-r", "bl.test", "echo", "passed"], b"", DNSTIMEOUT="1")
        assert res.stdout == b"passed\n"
        res = run(
            dead, "127.0.0.2", ["-c", "-t", "0", "-r", "bl.test", "echo", "x"], b"", DNSTIMEOUT="1"
        )
        assert res.stdout == b"451 temporary RBL lookup error\r\n"


def test_no_r_is_refused(dnsd) -> None:
    res = run(dnsd, "127.0.0.2", ["echo", "passed"], b"")
    assert res.returncode == 100
    assert b"rblsmtpd: no RBL given: use -r base" in res.stderr
    assert b"Traceback" not in res.stderr


def test_under_tcpserver_in_process_chain(tmp_path, dnsd) -> None:
    """tcpserver -> rblsmtpd -> (not listed) tcprulescheck, all in one process."""
    import signal

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("rblsmtpd", "tcprulescheck"):
        (bindir / name).symlink_to(INDIMAIL)
    rules = tmp_path / "r.cdb"
    subprocess.run(
        [str(INDIMAIL), "tcprules", str(rules), str(tmp_path / "r.tmp")],
        input=b"127.0.0.3:allow\n",
        check=True,
        timeout=30,
    )
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "DNSCACHEIP": dnsd.address, "DNSTIMEOUT": "3"}
    log = tmp_path / "log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                str(INDIMAIL),
                "tcpserver",
                "-1",
                "-v",
                "-HR",
                "127.0.0.3",
                "0",
                "rblsmtpd",
                "-r",
                "bl.test",
                "tcprulescheck",
                str(rules),
            ],
            stdout=subprocess.PIPE,
            stderr=logf,
            env=env,
        )
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(
            ("127.0.0.3", port), timeout=10, source_address=("127.0.0.3", 0)
        ) as c:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert data == b"rule 127.0.0.3:\nallow connection\n"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        proc.stdout.close()
    assert "Traceback" not in log.read_text()


RCPT = "user@mx.example.test"


def test_pooled_chain_rblsmtpd_then_qmail_smtpd(instance, tmp_path, dnsd) -> None:
    """tcpserver -> rblsmtpd -> qmail-smtpd in the pool's workers: a listed
    client gets rblsmtpd's 451, an unlisted one qmail-smtpd, and the next
    listed one the 451 again, all from one reused worker."""
    wrap = (str(instance.bin / "rblsmtpd"), "-r", "bl.test")
    env = {"DNSCACHEIP": dnsd.address, "DNSTIMEOUT": "3"}
    with SmtpService(instance, tmp_path, wrap=wrap, env=env) as svc:
        listed = session(svc.port, "127.0.0.2", RCPT)
        served_by(svc, 1)
        clean = session(svc.port, "127.0.0.1", RCPT)
        served_by(svc, 2)
        again = session(svc.port, "127.0.0.2", RCPT)
        pids = served_by(svc, 3)
        log = svc.logtext()
        workers = set(svc.children())
    assert listed[0] == "220 rblsmtpd.indimail" and listed[3] == "451 listed at bl.test", listed
    assert clean[0].startswith("220 mx.example.test") and clean[3] == "250 ok", clean
    assert again[3] == "451 listed at bl.test", again
    assert len(set(pids)) == 1 and pids[0] in workers, pids  # one pooled worker
    assert "Traceback" not in log and "internal error" not in log
