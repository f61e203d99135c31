"""qmail-qmqpd: receive one message via QMQP (port 628) and queue it.

The package is one netstring holding netstring(message),
netstring(sender) and one netstring per recipient; the reply is one
netstring ``K``/``Z``/``D`` + text.  The server relays anything: tcprules
must limit who may connect.  Every length is checked against the outer
one before anything is read.
"""

from __future__ import annotations

import os
import tempfile
import time

from indimail.smtpd import smtpd_io
from indimail.smtpd import smtpd_netstring as ns

SESSION = 3600


def serve(env: dict[str, str], conn: smtpd_io.Conn) -> int:
    from indimail.queue.submit import SubmitError, submit

    output = smtpd_io.Output(conn)
    inp = smtpd_io.Input(conn, output.flush)
    remotehost = env.get("TCPREMOTEHOST") or "unknown"
    local = env.get("TCPLOCALHOST") or env.get("TCPLOCALIP") or "unknown"
    try:
        total = ns.get_len(inp)
        budget = ns.Budget(total + 1)  # the closing comma
        n = ns.get_len(inp, budget)
        ok = True
        with tempfile.TemporaryFile() as fh:
            fh.write(
                ns.received_line(
                    "qmqpd",
                    "QMQP",
                    os.getpid(),
                    local,
                    env.get("TCPREMOTEIP") or "unknown",
                    remotehost if remotehost != "unknown" else None,
                    env.get("TCPREMOTEINFO"),
                    None,
                    False,
                )
            )
            ns.copy(inp, n, fh.write, budget)
            ns.get_comma(inp, budget)
            sender = ns.get_small(inp, 1000, budget)
            if sender is None or b"\0" in sender:
                ok = False
            rcpts: list[bytes] = []
            for _ in range(total + 1):  # each recipient uses >= 3 bytes of the budget
                if budget.left is not None and budget.left <= 1:
                    break
                r = ns.get_small(inp, 1000, budget)
                if r is None or b"\0" in r:
                    ok = False
                else:
                    rcpts.append(r)
            ns.get_comma(inp, budget)
            if not ok:
                result = b"Dsorry, I can't accept addresses like that (#5.1.3)"
            elif not rcpts:
                result = b"Dqq envelope format error (#5.3.5)"
            else:
                fh.flush()
                fh.seek(0)
                try:
                    q = submit(fh, sender or b"", rcpts, environ=env)
                    result = f"Kok {int(time.time())} qp {q.qp}".encode()
                except SubmitError as exc:
                    result = exc.text.rstrip("\n").split("\n")[-1].encode()
        output.write(ns.netstring(result))
        output.flush()
    except ns.BadProto:
        return 100
    except (ns.TooBig, smtpd_io.ConnTimeout):
        return 111
    except smtpd_io.ConnClosed:
        return 0
    return 0


def main(argv: list[str]) -> int:
    return serve(dict(os.environ), smtpd_io.plain(SESSION))
