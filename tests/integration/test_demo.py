"""The README's first command: packaging/demo.py makes a rootless instance,
starts delivery and SMTP on loopback, and both demo messages arrive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_delivers_and_serves_smtp(tmp_path: Path) -> None:
    top = tmp_path / "demo"
    port = _free_port()
    env = {**os.environ, "DEMO_SMTP_PORT": str(port)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "demo.py"), str(top)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    pids = [int(f.read_text()) for f in sorted((top / "run").glob("*.pid"))]
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        delivered = [ln for ln in res.stdout.splitlines() if ln.startswith("delivered: ")]
        assert len(delivered) == 2, res.stdout
        for line in delivered:
            assert Path(line.removeprefix("delivered: ")).is_file()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            assert s.recv(512).startswith(b"220 ")
            s.sendall(b"QUIT\r\n")
            assert s.recv(512).startswith(b"221 ")
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
