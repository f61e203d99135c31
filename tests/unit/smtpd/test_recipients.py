"""The recipients extension (CHECKRECIPIENT) and qmail-cdb.

``recipients_cases/NN-name.case`` sections:

``[recipients]``      lines of control/recipients (absent section = no file)
``[cdb PATH]``        a cdb under SYSCONFDIR whose keys are the lines
``[file PATH]``       a plain file under SYSCONFDIR (e.g. a broken cdb)
``[expect]``          ``address result``: the original's code (0 absent,
                      1 cdb, 2 PAVM, 3 ``!domain``, 4 ``!*``) or ``trouble``

``{pavm}`` in a line is a test PAVM program: arguments ``addr=code`` give
the exit code for an address (default 1), ``crash`` kills itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core import cdb
from indimail.smtpd import qmail_cdb
from indimail.smtpd.recipients import Recipients, RecipientsTrouble, keys_for, parse_line

CASES = Path(__file__).parent / "recipients_cases"
CASE_FILES = sorted(CASES.glob("*.case"))

PAVM = r"""#!{python}
import os, signal, sys
data = b""
while True:
    chunk = os.read(3, 4096)
    if not chunk:
        break
    data += chunk
addr, _, rest = data.partition(b"\0")
assert rest == b"\0\0", rest
if "crash" in sys.argv[1:]:
    os.kill(os.getpid(), signal.SIGKILL)
for arg in sys.argv[1:]:
    a, _, code = arg.rpartition("=")
    if a.encode() == addr:
        sys.exit(int(code))
sys.exit(1)
"""


def parse_case(path: Path) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("#") and current != "[recipients]":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line
            sections[current] = []
        elif current is not None and line.strip():
            sections[current].append(line)
    return sections


@pytest.mark.parametrize("case", CASE_FILES, ids=[c.stem for c in CASE_FILES])
def test_recipients_case(case: Path, tmp_path: Path) -> None:
    sysconfdir = tmp_path / "etc"
    controldir = sysconfdir / "control"
    controldir.mkdir(parents=True)
    pavm = tmp_path / "pavm"
    pavm.write_text(PAVM.format(python=sys.executable))
    pavm.chmod(0o755)
    sections = parse_case(case)
    for name, lines in sections.items():
        if name == "[recipients]":
            text = "".join(x.replace("{pavm}", str(pavm)) + "\n" for x in lines)
            (controldir / "recipients").write_text(text)
        elif name.startswith("[cdb "):
            target = sysconfdir / name[5:-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            cdb.make_from_pairs(target, str(target) + ".tmp", [(x.encode(), b"") for x in lines])
        elif name.startswith("[file "):
            target = sysconfdir / name[6:-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(x + "\n" for x in lines))
    rcpts = Recipients(controldir, sysconfdir, {"PATH": "/usr/bin:/bin"})
    assert sections.get("[expect]"), f"{case.name}: no [expect] lines"
    for line in sections["[expect]"]:
        addr, want = line.split()
        if want == "trouble":
            with pytest.raises(RecipientsTrouble):
                rcpts.lookup(addr.encode())
        else:
            assert rcpts.lookup(addr.encode()) == int(want), f"{case.name}: {line}"


def test_parse_line_forms() -> None:
    assert parse_line("!*").kind == "passthru"
    s = parse_line("!No.Check")
    assert (s.kind, s.domain) == ("skip", "no.check")
    s = parse_line("@Exact.test:users/x.cdb")
    assert (s.kind, s.domain, s.exact, s.target) == ("cdb", "exact.test", True, "users/x.cdb")
    s = parse_line("sub.test|prog a:b")
    assert (s.kind, s.domain, s.exact, s.target) == ("pavm", "sub.test", False, "prog a:b")
    s = parse_line("users/legacy.cdb")
    assert (s.kind, s.domain, s.target) == ("cdb", None, "users/legacy.cdb")
    assert parse_line("*|prog").domain is None


def test_keys_for() -> None:
    assert keys_for(b"a-b@x.test") == (b"a-b@x.test", b"x.test", b"a-@x.test")
    assert keys_for(b"root") == (b"root@localhost", b"localhost", None)
    assert keys_for(b"a@b@c.test") == (b"a@b@c.test", b"c.test", None)


# -- qmail-cdb ---------------------------------------------------------------


def run_qmail_cdb(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # through the module (cli.COMMANDS may not list qmail-cdb yet)
    code = (
        "import sys; from indimail.smtpd import qmail_cdb; from indimail.core.errors import Fatal\n"
        "try:\n    sys.exit(qmail_cdb.main(sys.argv[1:]))\n"
        "except Fatal as e:\n    sys.stderr.write('qmail-cdb: ' + e.message + '\\n'); "
        "sys.exit(e.code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "qmail-cdb", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )


def test_qmail_cdb_control_and_recipients(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "control").mkdir(parents=True)
    (etc / "users").mkdir()
    (etc / "control" / "badrcptto").write_text("# comment\nRoot@Example.TEST  \n\n@spam.test\t\n")
    (etc / "users" / "recipients").write_text("Alice@MX.test\nbob-@mx.test\n#x@mx.test\n")
    env = {"PATH": "/usr/bin:/bin", "SYSCONFDIR": str(etc), "CONTROLDIR": str(etc / "control")}
    res = run_qmail_cdb(["badrcptto"], env)
    assert res.returncode == 0, res.stderr
    with cdb.Reader(etc / "control" / "badrcptto.cdb") as r:
        assert r.get(b"root@example.test") == b""
        assert r.get(b"@spam.test") == b""
        assert r.get(b"# comment") is None
    res = run_qmail_cdb(["-r", "-m"], env)
    assert res.returncode == 0, res.stderr
    assert not (etc / "users" / "recipients").exists()
    assert (etc / "users" / "recipients.bak").exists()
    with cdb.Reader(etc / "users" / "recipients.cdb") as r:
        assert r.get(b":alice@mx.test") == b""
        assert r.get(b":bob-@mx.test") == b""
        assert r.get(b":#x@mx.test") is None
    # what qmail-cdb -r writes is what the recipients extension reads
    (etc / "control" / "recipients").write_text("users/recipients.cdb\n")
    rc = Recipients(etc / "control", etc, env)
    assert rc.lookup(b"ALICE@mx.test") == 1
    assert rc.lookup(b"bob-news@mx.test") == 1
    assert rc.lookup(b"carol@mx.test") == 0


def test_qmail_cdb_errors(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CONTROLDIR": str(tmp_path)}
    res = run_qmail_cdb([], env)
    assert res.returncode == 100 and b"usage: qmail-cdb" in res.stderr
    res = run_qmail_cdb(["-x", "f"], env)
    assert res.returncode == 100
    res = run_qmail_cdb(["missing"], env)
    assert res.returncode == 111
    assert f"qmail-cdb: fatal: unable to read {tmp_path}/missing: No such file".encode() in (
        res.stderr
    )
    assert not (tmp_path / "missing.cdb").exists()


def test_qmail_cdb_keys() -> None:
    assert qmail_cdb.keys(b"A@B\n#c\n \n d \r\n", False) == [b"a@b", b" d \r"]
    assert qmail_cdb.keys(b"A@B\n", True) == [b":a@b"]
