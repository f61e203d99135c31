"""bouncesaying, condredirect and preline, run as commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INDIMAIL = str(Path(sys.executable).parent / "indimail")
MSG = b"Subject: hi\n\nbody\n"


def run(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    msg = tmp_path / "msg"
    msg.write_bytes(MSG)
    base = {"PATH": "/usr/bin:/bin", "INDIMAIL_PATHS": str(tmp_path / "none.conf")}
    base.update(env or {})
    with open(msg, "rb") as stdin:
        return subprocess.run(
            [INDIMAIL, *args], stdin=stdin, capture_output=True, env=base, timeout=60
        )


def test_bouncesaying(tmp_path) -> None:
    res = run(tmp_path, "bouncesaying", "Go away.")
    assert (res.returncode, res.stderr) == (100, b"Go away.\n")
    res = run(tmp_path, "bouncesaying", "Go away.", "true")
    assert res.returncode == 100
    res = run(tmp_path, "bouncesaying", "Go away.", "false")
    assert (res.returncode, res.stderr) == (0, b"")
    res = run(tmp_path, "bouncesaying", "Go away.", "sh", "-c", "exit 111")
    assert res.returncode == 111
    assert res.stderr == b"bouncesaying: fatal: temporary child error\n"
    res = run(tmp_path, "bouncesaying")
    assert res.returncode == 100


def _queue(tmp_path: Path) -> Path:
    script = tmp_path / "q"
    script.write_text(f"#!/bin/sh\ncat > {tmp_path}/q.msg\ncat <&1 > {tmp_path}/q.env\n")
    script.chmod(0o755)
    return script


def test_condredirect(tmp_path) -> None:
    env = {
        "QMAILQUEUE": str(_queue(tmp_path)),
        "SENDER": "sue@example.net",
        "DTLINE": "Delivered-To: joe@example.org\n",
        "QQEH": "X-Q: 1\n",
    }
    res = run(tmp_path, "condredirect", "new@example.com", "grep", "-q", "body", env=env)
    assert res.returncode == 99, res.stderr
    assert res.stderr.startswith(b"condredirect: qp ")
    assert (tmp_path / "q.env").read_bytes() == b"Fsue@example.net\0Tnew@example.com\0\0"
    assert (tmp_path / "q.msg").read_bytes() == (b"Delivered-To: joe@example.org\nX-Q: 1\n" + MSG)
    (tmp_path / "q.env").unlink()
    res = run(tmp_path, "condredirect", "new@example.com", "false", env=env)
    assert res.returncode == 0
    assert not (tmp_path / "q.env").exists()
    res = run(tmp_path, "condredirect", "-r", "new@example.com", "false", env=env)
    assert res.returncode == 99
    assert (tmp_path / "q.env").exists()
    res = run(tmp_path, "condredirect", "-r", "new@example.com", "true", env=env)
    assert res.returncode == 0
    res = run(tmp_path, "condredirect", "new@example.com", "sh", "-c", "exit 100", env=env)
    assert (res.returncode, res.stderr) == (100, b"condredirect: fatal: permanent child error\n")
    res = run(tmp_path, "condredirect", "new@example.com", "true", env={"QMAILQUEUE": "x"})
    assert (res.returncode, res.stderr) == (100, b"condredirect: fatal: SENDER not set\n")
    res = run(tmp_path, "condredirect", "new@example.com")
    assert res.returncode == 100


def test_preline(tmp_path) -> None:
    env = {
        "UFLINE": "From sue@example.net Thu Jan 01 00:00:00 1970\n",
        "RPLINE": "Return-Path: <sue@example.net>\n",
        "DTLINE": "Delivered-To: joe@example.org\n",
        "QQEH": "",
    }
    res = run(tmp_path, "preline", "cat", env=env)
    assert res.returncode == 0
    assert res.stdout == (env["UFLINE"] + env["RPLINE"] + env["DTLINE"]).encode() + MSG
    res = run(tmp_path, "preline", "-f", "-d", "cat", env=env)
    assert res.stdout == env["RPLINE"].encode() + MSG
    res = run(tmp_path, "preline", "sh", "-c", "cat >/dev/null; exit 7", env=env)
    assert res.returncode == 7
    res = run(tmp_path, "preline", "cat", env={})
    assert (res.returncode, res.stderr) == (
        111,
        b"preline: fatal: No UFLINE environment variable\n",
    )
    res = run(tmp_path, "preline", env=env)
    assert res.returncode == 100
    res = run(tmp_path, "preline", "/nonexistent/prog", env=env)
    assert res.returncode == 100


def test_preline_in_dotqmail(home) -> None:
    home.qmail(".qmail", '|preline sh -c "cat > out"\n')
    link = home.path.parent / "bin"
    link.mkdir()
    (link / "preline").symlink_to(INDIMAIL)
    home.env["PATH"] = f"{link}:/usr/bin:/bin"
    code, report = home.deliver(MSG, qqeh="X-Q: 1\n")
    assert (code, report) == (0, "did 0+0+1\n")
    data = (home.path / "out").read_bytes()
    assert data.startswith(b"From sue@example.net ")
    assert data.endswith(
        b"Return-Path: <sue@example.net>\nDelivered-To: joe@example.org\nX-Q: 1\n" + MSG
    )
