"""Data-driven .qmail cases: see dotqmail_cases/README for the format."""

from __future__ import annotations

from pathlib import Path

import pytest

CASES = Path(__file__).parent / "dotqmail_cases"
NAMES = sorted(p.stem for p in CASES.glob("*.expect"))


def _text(raw: str) -> str:
    return raw.replace("\\n", "\n").replace("\\t", "\t")


def _args(name: str) -> dict[str, str]:
    path = CASES / f"{name}.args"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                key, _, value = line.partition("=")
                values[key.strip()] = _text(value)
    return values


@pytest.mark.parametrize("name", NAMES)
def test_case(home, name: str) -> None:
    values = _args(name)
    qmailname = values.pop("qmailname", None)
    mode = int(values.pop("mode", "644"), 8)
    doit = values.pop("doit", "1") != "0"
    if "default" in values:
        values["defaultdelivery"] = values.pop("default")
    qfile = CASES / f"{name}.qmail"
    if qmailname != "none" and qfile.exists():
        target = qmailname or ".qmail" + values.get("dash", "") + values.get("ext", "")
        home.qmail(target, qfile.read_bytes(), mode)
    msgfile = CASES / f"{name}.msg"
    if not msgfile.exists():
        msgfile = CASES / "default.msg"
    code, report = home.deliver(msgfile.read_bytes(), doit=doit, **values)
    want_report: list[str] = []
    for line in (CASES / f"{name}.expect").read_text().splitlines():
        verb, _, rest = line.partition(" ")
        if verb == "exit":
            assert code == int(rest), report
        elif verb == "report":
            want_report.append(rest)
        elif verb == "count":
            glob, _, n = rest.rpartition(" ")
            assert len(list(home.path.glob(glob))) == int(n), (glob, report)
        elif verb in ("grep", "nogrep"):
            glob, _, text = rest.partition(" ")
            files = list(home.path.glob(glob))
            assert files, (glob, report)
            for f in files:
                found = _text(text).encode() in f.read_bytes()
                assert found == (verb == "grep"), (f, f.read_bytes())
        elif line.strip():
            raise AssertionError(f"{name}.expect: unknown line {line!r}")
    if want_report:
        assert report.splitlines() == want_report
