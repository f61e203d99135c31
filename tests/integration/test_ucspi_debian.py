"""Rules cdb compatibility with Debian's ucspi-tcp (djb's tcprules).

Debian's tools are called by absolute path (/usr/bin/tcprules,
/usr/bin/tcprulescheck) because our commands have the same names; ours run
as ``indimail tcprules``.  Only the syntax both understand is used: exact
IPv4, dotted prefixes, ranges, =host, =.suffix, info@ip, deny/allow with
variables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INDIMAIL = Path(sys.executable).parent / "indimail"
DEB_RULES = "/usr/bin/tcprules"
DEB_CHECK = "/usr/bin/tcprulescheck"

RULES = """\
# common syntax
joe@127.0.0.1:allow,WHO="joe"
18.23.0.32:deny
10.1.2.3-5:allow,RANGE="yes"
10.7-8.:deny
127.:allow,RELAYCLIENT="",X=/a,b/
=mx.example.com:allow,H="1"
=.example.org:deny,WHY="org"
192.168.:allow,QMAILQUEUE="/usr/bin/qq"
:allow,DEFAULT="1"
"""

PROBES = [
    {"TCPREMOTEIP": "127.0.0.1"},
    {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEINFO": "joe"},
    {"TCPREMOTEIP": "18.23.0.32"},
    {"TCPREMOTEIP": "10.1.2.4"},
    {"TCPREMOTEIP": "10.1.2.6"},
    {"TCPREMOTEIP": "10.8.1.1"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "mx.example.com"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "a.b.example.org"},
    {"TCPREMOTEIP": "192.168.3.4"},
    {"TCPREMOTEIP": "9.9.9.9"},
]


@pytest.fixture(autouse=True)
def need_debian() -> None:
    for tool in (DEB_RULES, DEB_CHECK):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (apt-get install ucspi-tcp)")


def compile_with(cmd: list[str], tmp: Path, name: str) -> Path:
    out = tmp / f"{name}.cdb"
    res = subprocess.run(
        [*cmd, str(out), str(tmp / f"{name}.tmp")],
        input=RULES.encode(),
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return out


def check(cmd: list[str], cdb: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        [*cmd, str(cdb)],
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.decode()


OURS_RULES = [str(INDIMAIL), "tcprules"]
OURS_CHECK = [str(INDIMAIL), "tcprulescheck"]


def test_same_bytes(tmp_path: Path) -> None:
    ours = compile_with(OURS_RULES, tmp_path, "ours")
    theirs = compile_with([DEB_RULES], tmp_path, "theirs")
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("env", PROBES, ids=lambda e: "-".join(e.values()))
def test_our_cdb_read_by_debian(tmp_path: Path, env: dict[str, str]) -> None:
    ours = compile_with(OURS_RULES, tmp_path, "ours")
    theirs = compile_with([DEB_RULES], tmp_path, "theirs")
    want = check([DEB_CHECK], theirs, env)
    assert check([DEB_CHECK], ours, env) == want
    assert check(OURS_CHECK, theirs, env) == want
    assert check(OURS_CHECK, ours, env) == want
