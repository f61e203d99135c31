"""Hostile clients against one running tcpserver + qmail-smtpd (and an SMTPS
listener): at least 10,000 malformed sessions from 40 threads, time-bounded.

During and after the run: a normal session still works (checked every
second), memory stays bounded, no reply and no log line carries a traceback
or "internal error", every reply is a well-formed SMTP reply, and the only
queued messages are those whose DATA the client completed and saw accepted.
"""

from __future__ import annotations

import base64
import os
import random
import re
import smtplib
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smtp_service import SmtpService, rss_kb

from support import Instance

SESSIONS = 10_000
WORKERS = 40
DEADLINE = 300  # seconds for the hostile sessions (about 150 s on a quiet machine)
# Memory bound: every child is a fork of the warm listener (~45 MB RSS, nearly
# all of it shared copy-on-write).  The proportional set size (Pss) counts
# shared pages once; 50 children each dirtying ~2-3 MB plus the listener stay
# far below 300 MB.  A leak per session (10,000 of them) would not.
PSS_LIMIT_KB = 300 * 1024
LISTENER_GROWTH_KB = 30 * 1024
REPLY = re.compile(rb"(\d{3}[ -][^\r\n]*\r\n)*")


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Bad(Exception):
    pass


class Client:
    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.got = bytearray()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_until(self, needle: bytes, limit: float = 30) -> bool:
        end = time.monotonic() + limit
        while needle not in self.got and time.monotonic() < end:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return False
            if not chunk:
                return False
            self.got += chunk
        return needle in self.got

    def drain(self) -> None:
        """Half-close and read everything until the server closes."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.read_until(b"\0never\0")

    def close(self, plain: bool = True) -> bytes:
        self.sock.close()
        data = bytes(self.got)
        if b"Traceback" in data or b"internal error" in data.lower():
            raise Bad(f"traceback in reply: {data[-500:]!r}")
        if plain:
            end = REPLY.match(data).end()
            if end != len(data):
                raise Bad(f"malformed reply stream at {end}: {data[end - 100 : end + 200]!r}")
        return data


def greeted(port: int) -> Client:
    c = Client(port)
    c.read_until(b"\r\n")
    return c


# ------------------------------------------------------------ session kinds
def s_garbage(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    c.send(rnd.randbytes(rnd.randint(1, 4000)))
    c.drain()
    c.close()
    return "garbage"


def s_long_line(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    prefix = rnd.choice([b"", b"HELO ", b"MAIL FROM:<", b"RCPT TO:<"])
    c.send(prefix + b"A" * (1 << 20))
    c.drain()
    c.close()
    return "1MB line"


def s_nul(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    c.send(
        b"HELO a\0b\r\nMAIL FROM:<x\0y@example.org>\r\nRCPT TO:<\0@mx.example.test>\r\n"
        b"\0\0\0\r\nNOOP \0\r\nVRFY \0\xff\r\nQUIT\r\n"
    )
    c.drain()
    c.close()
    return "NUL"


def s_unterminated_data(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user@mx.example.test>\r\n")
    c.send(b"DATA\r\n")
    c.read_until(b"354 ")
    body = b"Subject: never\r\n\r\n" + b"line that never ends the message\r\n" * rnd.randint(1, 300)
    if rnd.random() < 0.3:
        body += b"\r\n." + b"x" * 1000  # a dot line that is not the end
    c.send(body)
    c.close()  # disconnect with DATA open
    return "unterminated DATA"


def s_many_rcpts(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\n")
    c.send(b"".join(b"RCPT TO:<u%d@mx.example.test>\r\n" % i for i in range(1000)))
    c.send(b"RSET\r\nQUIT\r\n")
    c.drain()
    c.close()
    assert c.got.count(b"250 ok\r\n") >= 1001, c.got[-300:]
    return "1000 RCPT"


def s_flood(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    cmds = [
        b"NOOP",
        b"RSET",
        b"HELO x.test",
        b"EHLO y.test",
        b"MAIL FROM:<a@b.c>",
        b"HELP",
        b"BOGUS",
    ]
    c.send(b"".join(rnd.choice(cmds) + b"\r\n" for _ in range(rnd.randint(200, 2000))))
    c.send(b"QUIT\r\n")
    c.drain()
    c.close()
    return "pipelining flood"


def s_auth_garbage(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    lines = rnd.choice(
        [
            [b"AUTH PLAIN !!!!", b"AUTH PLAIN", b"*"],
            [b"AUTH LOGIN", rnd.randbytes(50).hex().encode(), b"====", b"AUTH LOGIN =="],
            [b"AUTH CRAM-MD5", base64.b64encode(rnd.randbytes(200))],
            [b"AUTH FOO bar", b"AUTH", b"AUTH " + b"A" * 3000],
            [b"AUTH PLAIN " + base64.b64encode(b"\0test\0" + rnd.randbytes(30))],
            [b"AUTH PLAIN " + base64.b64encode(b"\0\0\0\0\0\0")],
        ]
    )
    c.send(b"EHLO c.test\r\n" + b"".join(x + b"\r\n" for x in lines) + b"QUIT\r\n")
    c.drain()
    c.close()
    return "AUTH garbage"


def s_tls_garbage(port: int, rnd: random.Random) -> str:
    c = greeted(port)
    c.send(b"EHLO c.test\r\nSTARTTLS\r\n")
    c.read_until(b"220 ready")
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rnd.randbytes(rnd.randint(0, 600))
    c.send(rnd.choice([rnd.randbytes(rnd.randint(1, 3000)), hello, b"EHLO plain.text\r\n"]))
    c.drain()
    c.sock.close()
    if b"Traceback" in c.got:
        raise Bad(f"traceback: {bytes(c.got)!r}")
    return "TLS garbage after STARTTLS"


def s_smtps_garbage(port: int, rnd: random.Random) -> str:
    c = Client(port)
    c.send(
        rnd.choice([rnd.randbytes(rnd.randint(1, 3000)), b"EHLO x\r\nQUIT\r\n", b"\x16\x03\x01"])
    )
    c.drain()
    c.sock.close()
    if b"Traceback" in c.got or b"internal error" in c.got:
        raise Bad(f"traceback: {bytes(c.got)!r}")
    return "SMTPS garbage"


def s_complete(port: int, rnd: random.Random, n: int) -> str:
    """A pipelined session that completes DATA (counted) and then misbehaves."""
    c = greeted(port)
    c.send(
        b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user@mx.example.test>\r\nDATA\r\n"
    )
    if not c.read_until(b"354 "):
        raise Bad(f"no 354: {bytes(c.got)!r}")
    c.send(b"Subject: complete %d\r\n\r\nbody\r\n.\r\n" % n)
    if not c.read_until(b" qp "):
        raise Bad(f"DATA not accepted: {bytes(c.got)!r}")
    c.read_until(b"\r\n", 5)
    c.send(rnd.randbytes(100) + b"\r\n")
    c.drain()
    c.close()
    return "complete DATA"


KINDS = [
    (s_garbage, 20),
    (s_long_line, 2),
    (s_nul, 10),
    (s_unterminated_data, 12),
    (s_many_rcpts, 3),
    (s_flood, 6),
    (s_auth_garbage, 14),
    (s_tls_garbage, 10),
    (s_smtps_garbage, 8),
    (s_complete, 5),
]


def slowloris(port: int, stop: float) -> str:
    """Dribble a byte every 0.5 s until our own deadline, then hang up."""
    c = greeted(port)
    line = b"EHLO slow.client.example.test\r\n" * 100
    i = 0
    while time.monotonic() < stop and i < len(line):
        if not c.send(line[i : i + 1]):
            break
        i += 1
        time.sleep(0.5)
    c.sock.close()
    return "slowloris"


def normal_session(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.test", timeout=30) as s:
        s.ehlo()
        s.sendmail("probe@example.org", ["user@mx.example.test"], b"Subject: probe\r\n\r\nok\r\n")


def test_hostile_clients(instance: Instance, tmp_path: Path) -> None:
    (instance.control / "timeoutsmtpd").write_text("20\n")
    rnd0 = random.Random(20240521)
    plan = []
    for i in range(SESSIONS):
        kind = rnd0.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        plan.append((i, kind, rnd0.getrandbits(64)))

    smtps = SmtpService(instance, tmp_path / "smtps", smtps="env", name="smtps", limit=30)
    svc = SmtpService(instance, tmp_path / "smtp", limit=60)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    completed = 0
    probes = 0
    lock = threading.Lock()
    samples: list[tuple[float, int, int, int]] = []  # t, listener rss, sum rss, sum pss
    done = threading.Event()
    with smtps, svc:
        start = time.monotonic()
        stop = start + DEADLINE

        def one(item) -> None:
            nonlocal completed
            i, kind, seed = item
            if time.monotonic() > stop:
                return
            rnd = random.Random(seed)
            try:
                if kind is s_smtps_garbage:
                    name = kind(smtps.port, rnd)
                elif kind is s_complete:
                    name = kind(svc.port, rnd, i)
                else:
                    name = kind(svc.port, rnd)
            except Bad as exc:
                with lock:
                    errors.append(f"{kind.__name__}: {exc}")
                return
            except (OSError, AssertionError) as exc:
                with lock:
                    errors.append(f"{kind.__name__}: {type(exc).__name__}: {exc}")
                return
            with lock:
                counts[name] += 1
                if kind is s_complete:
                    completed += 1

        def monitor() -> None:
            nonlocal probes
            for _ in range(10_000):
                if done.wait(1.0):
                    return
                try:
                    normal_session(svc.port)
                    probes += 1
                except (OSError, smtplib.SMTPException) as exc:
                    errors.append(f"probe failed: {exc!r}")
                pids = [svc.proc.pid, *svc.children(), smtps.proc.pid, *smtps.children()]
                samples.append(
                    (
                        time.monotonic() - start,
                        rss_kb(svc.proc.pid),
                        sum(rss_kb(p) for p in pids),
                        sum(pss_kb(p) for p in pids),
                    )
                )

        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        slow_stop = start + 15
        with ThreadPoolExecutor(WORKERS) as pool:
            slow = [pool.submit(slowloris, svc.port, slow_stop) for _ in range(4)]
            list(pool.map(one, plan, chunksize=8))
            for f in slow:
                counts[f.result()] += 1
        elapsed = time.monotonic() - start
        done.set()
        mon.join(30)
        normal_session(svc.port)  # still answers afterwards
        probes += 1
        time.sleep(1)
        final_listener = rss_kb(svc.proc.pid)
        log = svc.logtext() + smtps.logtext()

    total = sum(counts.values())
    rate = total / elapsed
    peak_pss = max(s[3] for s in samples) if samples else 0
    peak_rss = max(s[2] for s in samples) if samples else 0
    warm = samples[min(5, len(samples) - 1)][1] if samples else 0
    print(
        f"\nhostile sessions: {total} in {elapsed:.1f} s ({rate:.0f}/s), "
        f"{dict(counts)}; probes {probes}; completed DATA {completed}; "
        f"peak Pss sum {peak_pss // 1024} MB, peak RSS sum {peak_rss // 1024} MB; "
        f"listener RSS warm {warm // 1024} MB -> end {final_listener // 1024} MB; "
        f"errors {len(errors)}"
    )
    assert not errors, errors[:20]
    assert total >= SESSIONS, f"only {total} sessions in {DEADLINE} s"
    assert "Traceback" not in log
    bad = [line for line in log.splitlines() if "internal error" in line]
    assert not bad, bad[:10]
    assert peak_pss < PSS_LIMIT_KB, samples
    assert final_listener - warm < LISTENER_GROWTH_KB, samples
    # only completed DATA is queued: the hostile sessions' plus the probes'
    mess = instance.files("mess")
    subjects = Counter()
    for p in mess:
        head = p.read_bytes().split(b"\n\n", 1)[0]
        subjects[b"probe" if b"Subject: probe" in head else b"complete"] += 1
        assert b"never" not in head, head
    assert subjects[b"complete"] == completed
    assert subjects[b"probe"] == probes
    assert len(instance.files("todo")) == completed + probes
    assert os.path.exists(svc.log)
