"""Postfix's smtp-source (a client nobody here wrote) against qmail-smtpd."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from support import Instance, need_program

INDIMAIL = Path(sys.executable).parent / "indimail"


def serve(instance: Instance, listener: socket.socket, count: int, procs: list) -> None:
    """A tiny tcpserver: one qmail-smtpd per connection, ``count`` connections."""
    listener.settimeout(60)
    env = instance.env(TCPREMOTEIP="127.0.0.1", TCPLOCALIP="127.0.0.1", TCPLOCALPORT="25")
    for _ in range(count):
        conn, _ = listener.accept()
        conn.setblocking(True)
        with conn:
            procs.append(
                subprocess.Popen(
                    [str(INDIMAIL), "qmail-smtpd"],
                    stdin=conn,
                    stdout=conn,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )


def test_smtp_source_pipelined(instance: Instance) -> None:
    prog = need_program("smtp-source", "postfix")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    procs: list[subprocess.Popen] = []
    t = threading.Thread(target=serve, args=(instance, listener, 1, procs), daemon=True)
    t.start()
    try:
        # one session (-d), 10 messages, 3 recipients each, 5 KB
        res = subprocess.run(
            [
                prog,
                "-d",
                "-s",
                "1",
                "-m",
                "10",
                "-r",
                "3",
                "-l",
                "5120",
                "-f",
                "a@example.org",
                "-t",
                "bob@mx.example.test",
                "-M",
                "mx.example.test",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
    finally:
        t.join(60)
        listener.close()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert len(instance.files("todo")) == 10
    env = instance.files("todo")[0].read_bytes()
    assert env.count(b"\0T") == 3, env
