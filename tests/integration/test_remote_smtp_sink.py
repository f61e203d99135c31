"""qmail-remote delivering to Postfix's smtp-sink, a real SMTP server nobody
here wrote, through an smtproutes entry ``example.test:127.0.0.1:<port>``.

smtp-sink's ``-d`` dumps each transaction to a file, so the test checks the
bytes that arrived as well as qmail-remote's records.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer

SINK = "/usr/sbin/smtp-sink"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def sink():
    if not os.path.exists(SINK):
        pytest.skip("postfix not installed (apt-get install postfix)")
    dump = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    os.chmod(dump, 0o777)
    port = _free_port()
    cmd = [SINK]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    cmd += ["-d", f"{dump}/%M.", f"127.0.0.1:{port}", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"smtp-sink did not start: {err}")
                time.sleep(0.05)
        yield port, dump
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(dump, ignore_errors=True)


def _dumps(dump: Path, want: int) -> list[bytes]:
    deadline = time.monotonic() + 5
    while True:
        files = sorted(p for p in dump.rglob("*") if p.is_file())
        if len(files) >= want or time.monotonic() > deadline:
            return [p.read_bytes() for p in files]
        time.sleep(0.05)


def test_deliver_to_smtp_sink(instance, sink) -> None:
    port, dump = sink
    (instance.control / "smtproutes").write_text(f"example.test:127.0.0.1:{port}\n")
    (instance.control / "helohost").write_text("client.example.org\n")
    message = b"Subject: sink test\nX-Test: 1\n\n.leading dot\nbody line\n"
    res = instance.run(
        "qmail-remote",
        "example.test",
        "sender@example.org",
        "",
        str(len(message)),
        "rcpt@example.test",
        input=message,
        env=instance.env(DNSCACHEIP="127.0.0.1:9"),
    )
    assert res.returncode == 0, res.stderr
    records = res.stdout.split(b"\0")
    assert records[-1] == b""
    assert records[0] == b"rFrom: <sender@example.org> RCPT: <rcpt@example.test> "
    assert records[1].startswith(
        b"K127.0.0.1 accepted message - Protocol SMTP.\nRemote host said: 250"
    )
    assert len(records) == 3
    dumps = _dumps(dump, 1)
    assert len(dumps) == 1
    text = dumps[0]
    assert b"X-Helo-Args: client.example.org" in text
    # smtp-sink advertises PIPELINING and 8BITMIME but not SIZE: no parameters
    assert b"X-Mail-Args: <sender@example.org>\n" in text
    assert b"X-Rcpt-Args: <rcpt@example.test>" in text
    assert b"Subject: sink test\n" in text
    assert b"\n.leading dot\nbody line\n" in text


def test_null_sender_route_to_smtp_sink(instance, sink) -> None:
    """A bounce (null sender) follows the ``!@`` route of smtproutes."""
    port, dump = sink
    (instance.control / "smtproutes").write_text(f"!@:127.0.0.1:{port}\n")
    res = instance.run(
        "qmail-remote",
        "elsewhere.test",
        "",
        "",
        "3",
        "postmaster@elsewhere.test",
        input=b"hi\n",
        env=instance.env(DNSCACHEIP="127.0.0.1:9"),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(b"rFrom: <> RCPT: <postmaster@elsewhere.test> \0K127.0.0.1 ")
    assert any(b"X-Mail-Args: <>" in d for d in _dumps(dump, 1))
