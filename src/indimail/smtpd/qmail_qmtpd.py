"""qmail-qmtpd: receive mail via QMTP (port 209) and queue it.

Per package: netstring(message: first byte LF, or CR for CRLF text),
netstring(sender), netstring(netstrings of recipients); one reply
netstring per recipient (``K``/``Z``/``D`` + text), in order.  Packages may
be pipelined; the session ends at EOF or after an hour.  rcpthosts,
RELAYCLIENT, databytes/DATABYTES and HIDE_HOST are honoured as in the
original.  Lengths are checked before anything is read; messages are
spooled to a temporary file.
"""

from __future__ import annotations

import os
import tempfile
import time

from indimail.core import control
from indimail.smtpd import smtpd_io
from indimail.smtpd import smtpd_netstring as ns
from indimail.smtpd.smtpd_checks import ControlTrouble, RcptHosts

SESSION = 3600
R_DOMAIN = b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
R_RCPT = b"46:Dsorry, I can't handle that recipient (#5.1.3),"


def _databytes(env: dict[str, str]) -> int:
    v = env.get("DATABYTES")
    if v is None:
        return control.read_int("databytes", 0)
    digits = ""
    for c in v.strip():
        if not c.isdecimal():
            break
        digits += c
    return int(digits) if digits else 0


class _Spool:
    """Message body sink: CRLF -> LF when ``dos``; counts against databytes."""

    def __init__(self, fh, dos: bool, databytes: int) -> None:
        self.fh = fh
        self.dos = dos
        self.databytes = databytes
        self.size = 0
        self.pending_cr = False

    def _put(self, data: bytes) -> None:
        if self.databytes:
            room = self.databytes + 1 - self.size
            if room > 0:
                self.fh.write(data[:room])
        else:
            self.fh.write(data)
        self.size += len(data)

    def feed(self, data: bytes) -> None:
        if not self.dos:
            self._put(data)
            return
        if self.pending_cr:
            data = b"\r" + data
            self.pending_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self.pending_cr = True
        self._put(data.replace(b"\r\n", b"\n"))

    def end(self) -> None:
        if self.pending_cr:
            self._put(b"\r")
            self.pending_cr = False

    @property
    def too_big(self) -> bool:
        return bool(self.databytes) and self.size > self.databytes


def serve(env: dict[str, str], conn: smtpd_io.Conn) -> int:
    from indimail.queue.submit import SubmitError, submit

    hide = "HIDE_HOST" in env
    try:
        rcpthosts = RcptHosts(_controldir(env))
        databytes = _databytes(env)
    except (ControlTrouble, control.ControlError):
        return 111
    relayclient = env.get("RELAYCLIENT")
    rc = relayclient.encode("utf-8", "surrogateescape") if relayclient is not None else b""
    remotehost = env.get("TCPREMOTEHOST") or "unknown"
    remoteinfo = env.get("TCPREMOTEINFO")
    remoteip = env.get("TCPREMOTEIP") or "unknown"
    local = env.get("TCPLOCALHOST") or env.get("TCPLOCALIP") or "unknown"
    output = smtpd_io.Output(conn)
    inp = smtpd_io.Input(conn, output.flush)
    deadline = time.monotonic() + SESSION
    try:
        for _ in range(1 << 62):  # one package per round; ends at EOF or the deadline
            conn.timeout = max(1.0, deadline - time.monotonic())
            if time.monotonic() >= deadline:
                return 111
            try:
                first = ns.get_byte(inp)
            except smtpd_io.ConnClosed:
                output.flush()
                return 0
            n = ns.get_len(inp, first=first)
            if n == 0:
                return 100
            kind = ns.get_byte(inp)
            n -= 1
            if kind not in (0x0A, 0x0D):
                return 100
            with tempfile.TemporaryFile() as fh:
                fh.write(
                    ns.received_line(
                        "qmtpd",
                        "QMTP",
                        os.getpid(),
                        local,
                        remoteip,
                        remotehost if remotehost != "unknown" else None,
                        remoteinfo,
                        None,
                        hide,
                    )
                )
                spool = _Spool(fh, kind == 0x0D, databytes)
                ns.copy(inp, n, spool.feed)
                spool.end()
                ns.get_comma(inp)
                sender = ns.get_small(inp, 1000)
                sender_ok = sender is not None and b"\0" not in sender
                biglen = ns.get_len(inp)
                budget = ns.Budget(biglen)
                failures: list[bytes] = []
                good: list[bytes] = []
                for _r in range(biglen + 1):  # each recipient uses >= 3 bytes
                    if budget.left == 0:
                        break
                    rn = ns.get_len(inp, budget)
                    if rn >= (budget.left or 0):
                        return 100
                    if rn + len(rc) >= 1000:
                        ns.copy(inp, rn, lambda _b: None, budget)
                        failures.append(b"L")
                    else:
                        parts: list[bytes] = []
                        ns.copy(inp, rn, parts.append, budget)
                        addr = b"".join(parts)
                        if b"\0" in addr:
                            failures.append(b"N")
                        elif relayclient is not None:
                            good.append(addr + rc)
                            failures.append(b"")
                        elif not rcpthosts.allowed(addr):
                            failures.append(b"D")
                        else:
                            good.append(addr)
                            failures.append(b"")
                    ns.get_comma(inp, budget)
                ns.get_comma(inp)
                if not sender_ok:
                    result = b"Dunacceptable sender (#5.1.7)"
                elif spool.too_big:
                    result = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"
                elif not good:
                    result = b"Zqq write error or disk full (#4.3.0)"
                else:
                    fh.flush()
                    fh.seek(0)
                    try:
                        q = submit(fh, sender or b"", good, environ=env)
                        result = f"Kok {int(time.time())} qp {q.qp}".encode()
                    except SubmitError as exc:
                        result = exc.text.rstrip("\n").split("\n")[-1].encode()
            reply = ns.netstring(result)
            for f in failures:
                if f == b"":
                    output.write(reply)
                elif f == b"D":
                    output.write(R_DOMAIN)
                else:
                    output.write(R_RCPT)
    except ns.BadProto:
        return 100
    except ns.TooBig:
        return 111
    except smtpd_io.ConnTimeout:
        return 111
    except smtpd_io.ConnClosed:
        return 0
    return 0


def _controldir(env: dict[str, str]):
    from pathlib import Path

    from indimail.core import paths

    return Path(env.get("CONTROLDIR") or paths.get().controldir)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    return serve(env, smtpd_io.plain(SESSION))
