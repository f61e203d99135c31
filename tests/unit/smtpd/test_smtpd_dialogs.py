"""qmail-smtpd transcripts: ``smtpd_cases/NN-name.dialog`` (+ .env, .control).

Directives, one per line:

``A: args``   argv after ``qmail-smtpd`` (``{checkpw}`` = the test checkpassword)
``C: text``   a client line (CRLF added); consecutive C lines go in ONE write
``R: text``   raw client bytes, no CRLF added (backslash escapes)
``S: text``   the next server line, exactly (``{date}`` ``{n}`` ``{*}`` ``{b64}``
              ``{version}`` match volatile parts)
``X:``        the server closes the connection now
``E: n``      exit code of qmail-smtpd
``Q: n``      messages in todo/ afterwards
``M: regex``  the queued message matches (re.M)
``T: bytes``  the queued envelope contains these bytes (backslash escapes)
``L: regex``  a stderr log line matches
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from smtpd_harness import (
    Peer,
    control_file,
    env_file,
    expand,
    make_checkpw,
    pattern,
)

from indimail import __version__
from support import make_instance

CASES = Path(__file__).parent / "smtpd_cases"
DIALOGS = sorted(CASES.glob("*.dialog"))


def queued_messages(top: Path) -> list[Path]:
    return sorted(p for p in (top / "var" / "queue").glob("queue*/todo/**/*") if p.is_file())


@pytest.mark.parametrize("dialog", DIALOGS, ids=[d.stem for d in DIALOGS])
def test_dialog(dialog: Path, tmp_path: Path) -> None:
    inst = make_instance(tmp_path / "inst")
    checkpw = make_checkpw(tmp_path)
    control_file(dialog.with_suffix(".control"), inst.control)
    extra = {
        "TCPREMOTEIP": "192.0.2.7",
        "TCPLOCALIP": "192.0.2.1",
        "TCPLOCALPORT": "25",
        "TCPLOCALHOST": "mx.example.test",
        "TCPREMOTEHOST": "client.example.org",
    }
    for k, v in env_file(dialog.with_suffix(".env")).items():
        if v == "-":
            extra.pop(k, None)
        else:
            extra[k] = v.replace("{certdir}", str(tmp_path))
    env = inst.env(**extra)
    lines = dialog.read_text().splitlines()
    args: list[str] = []
    for line in lines:
        if line.startswith("A:"):
            args = line[2:].strip().replace("{checkpw}", str(checkpw)).split()
    peer = Peer(["qmail-smtpd", *args], env, tmp_path / "stderr")
    pending = b""
    rc = None
    checks: list[tuple[str, str]] = []
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#") or line.startswith("A:"):
                continue
            tag, _, text = line.partition(":")
            text = text[1:] if text.startswith(" ") else text
            where = f"{dialog.name}:{n}"
            if tag == "C":
                pending += expand(text) + b"\r\n"
                continue
            if tag == "R":
                pending += expand(text)
                continue
            if pending:
                peer.send(pending)
                pending = b""
            if tag == "S":
                got = peer.readline()
                assert got is not None, f"{where}: connection closed, wanted {text!r}"
                got_s = got.decode("utf-8", "replace")
                assert pattern(text, __version__).fullmatch(got_s), (
                    f"{where}: got {got_s!r}, wanted {text!r}\nlog:\n{peer.log()}"
                )
            elif tag == "X":
                rest = peer.read_all()
                assert rest == b"", f"{where}: expected close, got {rest!r}"
            else:
                checks.append((tag, text))
    finally:
        if pending:
            peer.send(pending)
        rc = peer.close()
    log = peer.log()
    assert "Traceback" not in log, log
    for tag, text in checks:
        if tag == "E":
            assert rc == int(text), f"exit {rc}, wanted {text}\n{log}"
        elif tag == "Q":
            assert len(inst.files("todo")) == int(text), inst.files("todo")
        elif tag == "L":
            assert re.search(text, log, re.M), f"log has no {text!r}:\n{log}"
        elif tag == "M":
            msgs = inst.files("mess")
            assert len(msgs) == 1, msgs
            body = msgs[0].read_text(errors="replace")
            assert re.search(text, body, re.M), f"message has no {text!r}:\n{body}"
        elif tag == "T":
            envs = inst.files("todo")
            assert len(envs) == 1, envs
            assert expand(text) in envs[0].read_bytes(), envs[0].read_bytes()
        else:
            raise AssertionError(f"{dialog.name}: unknown directive {tag!r}")
