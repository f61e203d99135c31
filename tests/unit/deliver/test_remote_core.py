"""qmail-remote: message transparency, argument errors, the command line,
the tcpto table and qmail-tcpto / qmail-tcpok."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

CASES = Path(__file__).parent / "remote_cases"
sys.path.insert(0, str(CASES))

from remote_harness import ScriptedServer, base_env, run_remote, transaction  # noqa: E402

from indimail.deliver import tcpto  # noqa: E402
from indimail.deliver.qmail_remote import addrmangle, match_partner  # noqa: E402

IP = "127.0.0.2"


def session(extra_after_data=()) -> list[tuple[str, str]]:
    return [
        ("S", "220 mx"),
        ("C", "EHLO helo.example.test"),
        ("S", "250 mx"),
        *transaction()[:6],  # MAIL, RCPT, DATA and their replies
        *extra_after_data,
    ]


def deliver(tmp_path, server, message, qqeh="", env_extra=None):
    env = base_env(tmp_path)
    env.update(env_extra or {})
    (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"example.test:{IP}:{server.port}\n")
    argv = ["qmail-remote", "example.test", "from@example.org", qqeh, "9", "to@example.test"]
    try:
        return run_remote(argv, message, env, tmp_path)
    finally:
        server.stop()


def test_crlf_dot_stuffing_and_qqeh(tmp_path) -> None:
    server = ScriptedServer(
        IP, [session([("C", "<MESSAGE>"), ("S", "250 ok"), ("C", "QUIT")])]
    ).start()
    msg = b".starts with dot\nSubject: x\n\n..two\n.\nend\n"
    code, out = deliver(tmp_path, server, msg, qqeh="X-QQEH: 1\n")
    assert code == 0
    assert out.endswith(
        b"K127.0.0.2 accepted message - Protocol SMTP.\nRemote host said: 250 ok\n\0"
    )
    assert server.messages == [
        b"X-QQEH: 1\r\n..starts with dot\r\nSubject: x\r\n\r\n...two\r\n..\r\nend\r\n"
    ]


def test_large_message_streams_in_chunks(tmp_path) -> None:
    server = ScriptedServer(
        IP, [session([("C", "<MESSAGE>"), ("S", "250 ok"), ("C", "QUIT")])]
    ).start()
    line = b".x" + b"y" * 97 + b"\n"
    msg = line * 3000  # 300 kB, crosses chunk boundaries
    _, out = deliver(tmp_path, server, msg)
    assert out.endswith(b"Remote host said: 250 ok\n\0")
    assert server.messages == [(b"." + line.replace(b"\n", b"\r\n")) * 3000]


def test_partial_final_line(tmp_path) -> None:
    server = ScriptedServer(IP, [session()]).start()
    _, out = deliver(tmp_path, server, b"no newline at end")
    assert out == (
        b"rFrom: <from@example.org> RCPT: <to@example.test> \0"
        b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n\0"
    )


def test_overlong_reply(tmp_path) -> None:
    script = [("S", "220 " + "x" * 20000)]
    server = ScriptedServer(IP, [script]).start()
    _, out = deliver(tmp_path, server, b"hi\n")
    assert out.startswith(b"ZConnected to 127.0.0.2 but the server sent an overlong reply.\n")


def test_endless_continuation(tmp_path) -> None:
    script = [("S", "<RAW>" + "220-more\\r\\n" * 600 + "220 end\\r\\n")]
    server = ScriptedServer(IP, [script]).start()
    _, out = deliver(tmp_path, server, b"hi\n")
    assert out.startswith(b"ZConnected to 127.0.0.2 but the server sent an overlong reply.\n")
    assert len(out) < 6000


def test_connection_refused_then_tcpto(tmp_path) -> None:
    s = socket.socket()
    s.bind((IP, 0))
    port = s.getsockname()[1]
    s.close()
    qdir = tmp_path / "queue"
    (qdir / "lock").mkdir(parents=True)
    (qdir / "lock" / "tcpto").write_bytes(bytes(2048))
    env = base_env(tmp_path)
    env["QUEUEDIR"] = str(qdir)
    (Path(env["CONTROLDIR"]) / "smtproutes").write_text(f"example.test:{IP}:{port}\n")
    argv = ["qmail-remote", "example.test", "from@example.org", "", "3", "to@example.test"]
    _, out = run_remote(argv, b"hi\n", env, tmp_path)
    assert (
        out
        == (
            f"ZSorry, I wasn't able to establish a SMTP connection for {IP} to {IP} port {port} "
            "bind IP [::]. (#4.4.1)\n\0"
        ).encode()
    )
    rec = (qdir / "lock" / "tcpto").read_bytes()[:32]
    assert rec[0] == socket.AF_INET and rec[4] == 1 and rec[16:20] == socket.inet_aton(IP)


def test_usage(tmp_path) -> None:
    _, out = run_remote(["qmail-remote", "a", "b"], b"", base_env(tmp_path), tmp_path)
    assert out == b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0"


def test_bad_outgoingip(tmp_path) -> None:
    env = base_env(tmp_path)
    (Path(env["CONTROLDIR"]) / "outgoingip").write_text("not-an-ip\n")
    argv = ["qmail-remote", "example.test", "a@b", "", "3", "c@example.test"]
    _, out = run_remote(argv, b"hi\n", env, tmp_path)
    assert out == f"Zinvalid ipaddr in {env['CONTROLDIR']}/outgoingip (#4.3.0)\n\0".encode()


def test_quoting() -> None:
    assert addrmangle(b"a b@example.com") == b'"a b"@example.com'
    assert addrmangle(b"a..b@example.com") == b'"a..b"@example.com'
    assert addrmangle(b"plain.user@example.com") == b"plain.user@example.com"
    assert addrmangle(b"") == b""


def test_match_partner() -> None:
    assert match_partner("MX.Example.com", "mx.example.com")
    assert match_partner("*.example.com", "mx.example.com")
    assert not match_partner("*.example.com", "a.mx.example.com")


# -- tcpto table ----------------------------------------------------------------


def test_tcpto_backoff_after_two_failures(tmp_path) -> None:
    f = tmp_path / "tcpto"
    f.write_bytes(bytes(2048))
    t = tcpto.Table(f)
    now = 1_700_000_000
    t.record("192.0.2.1", True, now=now)
    assert not t.is_timed_out("192.0.2.1", now=now + 1, pid=1)
    t.record("192.0.2.1", True, now=now + 60)  # inside max_tolerance: not counted
    t.record("192.0.2.1", True, now=now + 200)
    assert t.is_timed_out("192.0.2.1", now=now + 300, pid=1)
    # (60 + (pid & 31)) << 6 seconds later it is tried again
    assert not t.is_timed_out("192.0.2.1", now=now + 200 + (61 << 6), pid=1)
    t.is_timed_out("192.0.2.1", now=now + 300, pid=1)
    t.record("192.0.2.1", False)
    assert f.read_bytes()[4] == 0


def test_tcpto_ipv6_record_layout(tmp_path) -> None:
    f = tmp_path / "tcpto"
    f.write_bytes(bytes(2048))
    tcpto.Table(f).record("2001:db8::1", True, now=1234)
    rec = f.read_bytes()[:32]
    assert struct.unpack("<I", rec[:4])[0] == socket.AF_INET6
    assert rec[4] == 1 and struct.unpack("<I", rec[8:12])[0] == 1234
    assert rec[16:32] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")


def test_qmail_tcpto_and_tcpok_commands(instance) -> None:
    q1 = instance.queue(1)
    lock = q1 / "lock" / "tcpto"
    if not lock.exists():
        lock.write_bytes(bytes(2048))
    now = int(time.time())
    rec = bytearray(32)
    struct.pack_into("<I", rec, 0, socket.AF_INET)
    rec[4] = 3
    struct.pack_into("<I", rec, 8, now - 100)
    rec[16:20] = socket.inet_aton("192.0.2.7")
    data = bytearray(lock.read_bytes())
    data[0:32] = rec
    lock.write_bytes(bytes(data))
    res = instance.run("qmail-tcpto")
    assert res.returncode == 0, res.stderr
    assert f"processing queue {q1}\n".encode() in res.stdout
    line = res.stderr.decode().splitlines()[0]
    assert line.startswith("192.0.2.7 ipv4 timed out ")
    assert line.endswith(" seconds ago; # recent timeouts: 3")
    res = instance.run("qmail-tcpok")
    assert res.returncode == 0, res.stderr
    assert lock.read_bytes() == bytes(len(lock.read_bytes()))
    assert instance.run("qmail-tcpto").stderr == b""


def test_command_line(instance, tmp_path) -> None:
    server = ScriptedServer(
        IP, [session([("C", "<MESSAGE>"), ("S", "250 ok"), ("C", "QUIT")])]
    ).start()
    try:
        (instance.control / "smtproutes").write_text(f"example.test:{IP}:{server.port}\n")
        res = instance.run(
            "qmail-remote",
            "example.test",
            "from@example.org",
            "",
            "3",
            "to@example.test",
            input=b"hi\n",
            env=instance.env(DNSCACHEIP="127.0.0.1:9"),
        )
    finally:
        server.stop()
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        b"rFrom: <from@example.org> RCPT: <to@example.test> \0"
        b"K127.0.0.2 accepted message - Protocol SMTP.\nRemote host said: 250 ok\n\0"
    )
    assert os.path.exists(instance.bin / "qmail-tcpok")


def test_onsuccess_hook(tmp_path) -> None:
    server = ScriptedServer(
        IP, [session([("C", "<MESSAGE>"), ("S", "250 2.0.0 queued"), ("C", "QUIT")])]
    ).start()
    hook = tmp_path / "hook.sh"
    seen = tmp_path / "seen"
    hook.write_text(
        f'#!/bin/sh\necho "$SMTPSTATUS|$SMTPCODE|$SMTPHOST|$SMTPTEXT|$5" > {seen}\nexit 3\n'
    )
    hook.chmod(0o755)
    code, out = deliver(tmp_path, server, b"hi\n", env_extra={"ONSUCCESS_REMOTE": str(hook)})
    assert out.endswith(b"Remote host said: 250 2.0.0 queued\n\0")
    assert code == 3
    assert seen.read_text() == "K|250|127.0.0.2|250 2.0.0 queued|to@example.test\n"
