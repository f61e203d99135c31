"""Run qmail-smtpd/qmtpd/qmqpd as a subprocess over a socketpair (fds 0/1)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from indimail.smtpd import qmail_smtpd, smtpd_io
from support import make_checkpw  # noqa: F401 - used by the dialogue tests

INDIMAIL = Path(sys.executable).parent / "indimail"


class Peer:
    """The client side of a socketpair whose other end is the server's fd 0/1."""

    def __init__(self, cmd: list[str], env: dict[str, str], stderr_path: Path) -> None:
        self.sock, child = socket.socketpair()
        self.errfile = open(stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [str(INDIMAIL), *cmd], stdin=child, stdout=child, stderr=self.errfile, env=env
        )
        child.close()
        self.buf = b""
        self.stderr_path = stderr_path

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the server may have hung up already (too long line...)

    def readline(self, timeout: float = 15) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply line; have {self.buf!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_all(self, timeout: float = 15) -> bytes:
        out = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return out
            if not chunk:
                return out
            out += chunk

    def close(self, timeout: float = 15) -> int:
        try:
            self.sock.close()
        finally:
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            self.errfile.close()
        return rc

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


PLACEHOLDERS = {
    "{date}": r"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000",
    "{n}": r"\d+",
    "{*}": r".*",
    "{b64}": r"[A-Za-z0-9+/=]+",
}


def pattern(expected: str, version: str) -> re.Pattern[str]:
    parts = re.split(r"(\{date\}|\{n\}|\{\*\}|\{b64\}|\{version\})", expected)
    rx = ""
    for p in parts:
        if p in PLACEHOLDERS:
            rx += PLACEHOLDERS[p]
        elif p == "{version}":
            rx += re.escape(version)
        else:
            rx += re.escape(p)
    return re.compile(rx + r"\r\n")


def expand(text: str) -> bytes:
    """Client text: {rep:X:N} repeats X N times; backslash escapes decoded."""

    def rep(m: re.Match[str]) -> str:
        return m.group(1) * int(m.group(2))

    text = re.sub(r"\{rep:(.):(\d+)\}", rep, text)
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = v
    return env


def control_file(path: Path, controldir: Path) -> None:
    """``name=value`` lines (``\\n`` = newline); ``-name`` removes the file.

    A name ending in ``.cdb`` gets a cdb whose keys are the ``\\n``-separated
    items of the value (empty data); names may hold ``../`` and folders.
    """
    from indimail.core import cdb

    if not path.exists():
        return
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("-"):
            (controldir / line[1:]).unlink(missing_ok=True)
            continue
        k, _, v = line.partition("=")
        target = controldir / k
        target.parent.mkdir(parents=True, exist_ok=True)
        if k.endswith(".cdb"):
            keys = [x.encode() for x in v.split("\\n") if x]
            cdb.make_from_pairs(target, str(target) + ".tmp", [(x, b"") for x in keys])
            continue
        target.write_text(v.replace("\\n", "\n") + "\n" if v else "")


class FakeConn(smtpd_io.Conn):
    """A connection for a Session run in-process: the client's bytes in
    chunks, what the server sent, and the largest input buffer seen."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = bytearray()
        self.session: qmail_smtpd.Session | None = None
        self.max_buffered = 0

    def recv(self, n: int) -> bytes:
        if self.session is not None and hasattr(self.session, "input"):
            self.max_buffered = max(self.max_buffered, len(self.session.input.buf))
        if not self.chunks:
            raise smtpd_io.ConnClosed("client dropped connection")
        return self.chunks.pop(0)[:n]

    def send(self, data: bytes) -> None:
        self.sent += data
