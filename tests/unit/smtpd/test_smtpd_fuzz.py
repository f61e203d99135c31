"""Fuzzing qmail-smtpd's protocol code in-process with hypothesis.

Whatever the peer sends, the session never raises, every line it writes
is a well-formed reply, and its input buffer stays bounded.  Inputs that
ever broke these rules are kept in ``fuzz_corpus/`` and replayed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtpd_harness import FakeConn

from indimail.core import paths
from indimail.smtpd import qmail_smtpd, smtpd_io
from support import make_instance

CORPUS = Path(__file__).parent / "fuzz_corpus"
REPLY = re.compile(rb"\d{3}[ -][^\r\n]*\r\n")


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory):
    inst = make_instance(tmp_path_factory.mktemp("fuzz") / "inst")
    env = inst.env(TCPREMOTEIP="192.0.2.7", TCPLOCALIP="192.0.2.1", DATABYTES="4096")
    (inst.control / "maxcmdlen").write_text("512\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("INDIMAIL_PATHS", env["INDIMAIL_PATHS"])
    paths.reload()
    yield env
    mp.undo()
    paths.reload()


def run_session(env: dict[str, str], data: bytes) -> None:
    chunks = [data[i : i + 700] for i in range(0, len(data), 700)] or [b""]
    conn = FakeConn([c for c in chunks if c])
    logs: list[str] = []
    session = qmail_smtpd.Session(["qmail-smtpd"], env, conn, log=logs.append)
    conn.session = session
    try:
        rc = session.run()
    except BaseException:
        save(data)
        raise
    ok = (
        rc in (0, 1)
        and REPLY.sub(b"", bytes(conn.sent)) in (b"",)
        and conn.max_buffered <= 512 + smtpd_io.Input.CHUNK
        and not any("internal error" in line for line in logs)
    )
    if not ok:
        save(data)
    assert rc in (0, 1)
    assert REPLY.sub(b"", bytes(conn.sent)) == b"", bytes(conn.sent)
    assert conn.max_buffered <= 512 + smtpd_io.Input.CHUNK
    assert not any("internal error" in line for line in logs), logs


def save(data: bytes) -> None:
    CORPUS.mkdir(exist_ok=True)
    (CORPUS / (hashlib.sha1(data).hexdigest()[:16] + ".bin")).write_bytes(data)


VERBS = [
    b"HELO",
    b"EHLO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"QUIT",
    b"HELP",
    b"AUTH",
    b"STARTTLS",
    b"ETRN",
    b"XYZ",
    b"",
    b".",
]
line = st.tuples(
    st.sampled_from(VERBS),
    st.binary(max_size=80),
    st.sampled_from([b"\r\n", b"\n", b"", b"\r"]),
).map(lambda t: t[0] + t[1] + t[2])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(line, max_size=25))
def test_fuzz_commands(fuzz_env, lines: list[bytes]) -> None:
    run_session(fuzz_env, b"".join(lines))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=3000))
def test_fuzz_raw(fuzz_env, data: bytes) -> None:
    run_session(fuzz_env, data)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.name)
def test_corpus(fuzz_env, path: Path) -> None:
    run_session(fuzz_env, path.read_bytes())
