"""qmail-showctl: the original's wording for every control file, the queue
and internals sections, errors that name the file and exit 111.

The cases in ``showctl_cases/`` (format in its README) set up control files
and give blocks of lines that must appear in the output.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "showctl_cases"


def unescape(value: str) -> bytes:
    raw = value.encode("utf-8")
    raw = raw.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


@dataclass
class Case:
    actions: list[tuple[str, str, bytes]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    exit: int = 0
    stdout: list[list[str]] = field(default_factory=list)
    stderr: list[list[str]] = field(default_factory=list)


def blocks(lines: list[str]) -> list[list[str]]:
    found: list[list[str]] = [[]]
    for line in lines:
        if line == "...":
            found.append([])
        else:
            found[-1].append(line)
    return [b for b in found if b]


def parse_case(path: Path) -> Case:
    case = Case()
    section: list[str] | None = None
    out: list[str] = []
    err: list[str] = []
    for line in path.read_text("utf-8").split("\n"):
        if line == "stdout:":
            section = out
            continue
        if line == "stderr:":
            section = err
            continue
        if section is not None:
            section.append(line)
            continue
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "file":
            name, _, value = rest.partition("=")
            case.actions.append(("file", name, unescape(value)))
        elif word in ("dir", "rm"):
            case.actions.append((word, rest.strip(), b""))
        elif word == "args":
            case.args = shlex.split(rest)
        elif word == "exit":
            case.exit = int(rest)
        else:
            raise ValueError(f"{path.name}: unknown directive {word!r}")
    for lines in (out, err):
        while lines and lines[-1] == "":
            lines.pop()
    case.stdout = blocks(out)
    case.stderr = blocks(err)
    return case


def placeholders(instance) -> dict[str, str]:
    user = pwd.getpwuid(os.getuid())
    return {
        "control": str(instance.control),
        "top": str(instance.top),
        "queue_base": str(instance.queue_base),
        "uid": str(user.pw_uid),
        "gid": str(os.getgid()),
        "user": user.pw_name,
        "group": grp.getgrgid(os.getgid()).gr_name,
    }


def expand(line: str, values: dict[str, str]) -> str:
    if line.endswith("$"):
        line = line[:-1]
    line = line.replace("\\t", "\t")
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], line)


def assert_blocks_in_order(text: str, wanted: list[list[str]], values: dict[str, str]) -> None:
    lines = text.split("\n")
    pos = 0
    for block in wanted:
        want = [expand(line, values) for line in block]
        for start in range(pos, len(lines) - len(want) + 1):
            if lines[start : start + len(want)] == want:
                pos = start + len(want)
                break
        else:
            shown = "\n".join(want)
            raise AssertionError(f"block not found (in order):\n{shown}\n--- in ---\n{text}")


def apply(instance, case: Case) -> None:
    for kind, name, value in case.actions:
        target = instance.control / name
        if kind == "file":
            target.write_bytes(value)
        elif kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


@pytest.mark.parametrize("name", sorted(p.name for p in CASES.glob("*.case")))
def test_case(instance, name):
    case = parse_case(CASES / name)
    apply(instance, case)
    res = instance.run("qmail-showctl", *case.args)
    values = placeholders(instance)
    stdout = res.stdout.decode("utf-8", "replace")
    stderr = res.stderr.decode("utf-8", "replace")
    assert res.returncode == case.exit, stderr
    assert "Traceback" not in stderr
    assert_blocks_in_order(stdout, case.stdout, values)
    assert_blocks_in_order(stderr, case.stderr, values)
    if not case.stderr and case.exit == 0:
        assert stderr == ""


# -- behaviour outside the case files ------------------------------------------


def test_every_control_entry_is_two_lines(instance):
    """Each -c entry: ``name<pad 22>: text`` (continuations indented 24),
    then an empty line; names appear once."""
    res = instance.run("qmail-showctl", "-c")
    assert res.returncode == 0, res.stderr
    text = res.stdout.decode()
    header = "------------------- begin control files ----------------------\n"
    assert text.startswith(header)
    entries = text[len(header) :].rstrip("\n").split("\n\n")
    names = []
    for entry in entries:
        first, *rest = entry.split("\n")
        assert re.match(r"^[\w.\-]+ *: ", first), entry
        assert first.index(": ") >= 22
        names.append(first.split(":")[0].strip())
        assert all(line.startswith(" " * 24) for line in rest), entry
    assert len(names) == len(set(names))


SPEC_CONTROLS = [
    name
    for line in (CASES / "spec-controls.txt").read_text("utf-8").splitlines()
    if not line.startswith("#")
    for name in line.split()
]


def test_spec_controls_are_all_shown(instance):
    res = instance.run("qmail-showctl", "-c", "-C")
    assert res.returncode == 0, res.stderr
    shown = {line.split(":")[0].strip() for line in res.stdout.decode().split("\n") if ": " in line}
    wanted = [*SPEC_CONTROLS, "concurrencylocal", "concurrencyremote"]
    missing = [name for name in wanted if name not in shown]
    assert missing == []


def test_spec_controls_not_reported_unknown(instance):
    for name in SPEC_CONTROLS:
        path = instance.control / name
        if not path.exists():
            path.write_text("1\n")
    res = instance.run("qmail-showctl", "-e")
    assert res.returncode == 0
    assert b"I have no idea" not in res.stderr


def test_all_sections(instance):
    (instance.top / "etc" / "indimail-mta-release").write_text("indimail-mta 3.0.0\n")
    dq = instance.control / "defaultqueue"
    dq.mkdir()
    (dq / "QUEUE_COUNT").write_text("2\n")
    res = instance.run("qmail-showctl", "-a")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    order = [
        "---------------- software version information ----------------\nindimail-mta 3.0.0\n",
        "------------------ begin show env ----------------------------\n",
        "------------------ begin show internals ----------------------\n",
        "--------------------- begin show queues ----------------------\n",
        "-------------------- concurrency limits ----------------------\n",
        "------------------- begin control files ----------------------\n",
    ]
    positions = [out.index(part) for part in order]
    assert positions == sorted(positions)
    assert "\nQUEUE_COUNT=2\n" in out
    assert f"\nHOME={instance.env()['HOME']}\n" in out
    assert res.stderr.decode().startswith(
        "------------------- begin unknown files ----------------------\n"
    )


def test_user_defaultqueue_shown_in_internals(instance):
    home = Path(instance.env()["HOME"])
    (home / ".defaultqueue").mkdir(parents=True)
    res = instance.run("qmail-showctl", "-i")
    assert res.returncode == 0, res.stderr
    assert f"user   environment dir: {home}/.defaultqueue\n".encode() in res.stdout


def test_unknown_role_account(instance):
    conf = instance.conf.read_text()
    instance.conf.write_text(conf + "USER_QMAILR=no-such-user-here\n")
    res = instance.run("qmail-showctl", "-i")
    assert res.returncode == 111
    assert b" qmailr  : ? (no user no-such-user-here)\n" in res.stdout
    assert b"no-such-user-here" in res.stderr


def test_missing_controldir(instance, tmp_path):
    gone = tmp_path / "nocontrol"
    res = instance.run("qmail-showctl", env=instance.env(CONTROLDIR=str(gone)))
    assert res.returncode == 111
    assert f"Oops! Unable to chdir to {gone}.\n".encode() in res.stdout


def test_bad_option(instance):
    res = instance.run("qmail-showctl", "-Z")
    assert res.returncode == 100
    assert res.stderr.startswith(b"qmail-showctl: fatal: usage: qmail-showctl")
    assert b"Traceback" not in res.stderr


def test_morercpthosts_cdb_states(instance):
    ctl = instance.control
    (ctl / "morercpthosts").write_text("a.example.test\n")
    (ctl / "morercpthosts.cdb").write_bytes(b"")
    os.utime(ctl / "morercpthosts", (2000, 2000))
    os.utime(ctl / "morercpthosts.cdb", (1000, 1000))
    res = instance.run("qmail-showctl", "-c")
    assert b"morercpthosts.cdb     : Oops! morercpthosts.cdb is older than morercpthosts.\n" in (
        res.stdout
    )
    os.utime(ctl / "morercpthosts.cdb", (3000, 3000))
    res = instance.run("qmail-showctl", "-c")
    assert (
        b"morercpthosts.cdb     : Modified recently enough; hopefully up to date.\n" in res.stdout
    )
    (ctl / "morercpthosts").unlink()
    res = instance.run("qmail-showctl", "-c")
    assert (
        b"morercpthosts.cdb     : Oops! morercpthosts.cdb exists but morercpthosts doesn't.\n"
        in res.stdout
    )
