"""Paths: platform defaults < paths file < environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from indimail.core import paths
from indimail.core.errors import Fatal


def test_linux_defaults(tmp_path):
    p = paths.load(environ={"INDIMAIL_PATHS": str(_file(tmp_path, ""))}, platform="linux")
    assert p.qmailhome == Path("/var/indimail")
    assert p.sysconfdir == Path("/etc/indimail")
    assert p.controldir == Path("/etc/indimail/control")
    assert p.libexecdir == Path("/usr/libexec/indimail")
    assert p.servicedir == Path("/service")
    assert p.bindir == Path("/usr/bin")
    assert (p.queue_count, p.queue_start, p.conf_split, p.bigtodo) == (5, 1, 151, 0)
    assert p.user("qmailq") == "qmailq" and p.group("qmail") == "qmail"


@pytest.mark.parametrize("platform", ["freebsd14", "darwin"])
def test_bsd_defaults(tmp_path, platform):
    p = paths.load(environ={"INDIMAIL_PATHS": str(_file(tmp_path, ""))}, platform=platform)
    assert p.sysconfdir == Path("/usr/local/etc/indimail")
    assert p.servicedir == Path("/usr/local/etc/indimail/sv")
    assert p.bindir == Path("/usr/local/bin")
    assert p.qmailhome == Path("/var/indimail")


def test_file_then_environment(tmp_path):
    f = _file(
        tmp_path,
        "QMAILHOME=/srv/q\nSYSCONFDIR='/srv/etc'\nQUEUE_COUNT=3\nUSER_QMAILQ=alice\n# comment\n",
    )
    p = paths.load(environ={"INDIMAIL_PATHS": str(f)}, platform="linux")
    assert p.qmailhome == Path("/srv/q")
    assert p.controldir == Path("/srv/etc/control")
    assert p.queue_count == 3
    assert p.user("qmailq") == "alice"
    assert p.source == f
    p = paths.load(
        environ={
            "INDIMAIL_PATHS": str(f),
            "CONTROLDIR": "/c",
            "QUEUE_COUNT": "7",
            "QUEUE_BASE": "/qb",
        },
        platform="linux",
    )
    assert p.controldir == Path("/c")
    assert p.queue_count == 7
    assert p.queue_dirs() == [Path(f"/qb/queue{n}") for n in range(1, 8)]


def test_queue_base_from_control(tmp_path):
    ctl = tmp_path / "control"
    ctl.mkdir()
    f = _file(tmp_path, f"CONTROLDIR={ctl}\nQMAILHOME={tmp_path}\n")
    p = paths.load(environ={"INDIMAIL_PATHS": str(f)})
    assert p.queue_base == tmp_path / "queue"
    (ctl / "queue_base").write_text("/var/spool/q  \n")
    assert p.queue_base == Path("/var/spool/q")
    assert paths.load_places(environ={"INDIMAIL_PATHS": str(f)}).queue_base == "/var/spool/q"


def test_file_found_relative_to_argv0(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / paths.PATHS_FILE).write_text("QMAILHOME=/from/argv0\n")
    p = paths.load(environ={}, argv0=str(tmp_path / "bin" / "sendmail"))
    assert p.qmailhome == Path("/from/argv0")


def test_bad_file_names_line(tmp_path):
    f = _file(tmp_path, "QMAILHOME=/x\nthis is wrong\n")
    with pytest.raises(Fatal) as exc:
        paths.load(environ={"INDIMAIL_PATHS": str(f)})
    assert f"{f}:2:" in exc.value.message


def test_bad_number(tmp_path):
    f = _file(tmp_path, "QUEUE_COUNT=five\n")
    with pytest.raises(Fatal) as exc:
        paths.load(environ={"INDIMAIL_PATHS": str(f)})
    assert exc.value.message == f"QUEUE_COUNT='five' is not a number ({f})"


def test_bad_number_names_the_environment_when_it_overrides(tmp_path):
    # the file is fine; the admin's exported value is what is wrong
    f = _file(tmp_path, "QUEUE_COUNT=2\nQUEUE_START=1\n")
    with pytest.raises(Fatal) as exc:
        paths.load(environ={"INDIMAIL_PATHS": str(f), "QUEUE_COUNT": "abc"})
    assert exc.value.message == "QUEUE_COUNT='abc' is not a number (environment)"
    with pytest.raises(Fatal) as exc:
        paths.load(environ={"INDIMAIL_PATHS": str(f), "QUEUE_START": "x"})
    assert exc.value.message == "QUEUE_START='x' is not a number (environment)"


def test_missing_explicit_file(tmp_path):
    with pytest.raises(Fatal) as exc:
        paths.load(environ={"INDIMAIL_PATHS": str(tmp_path / "nope.conf")})
    assert "does not exist" in exc.value.message


def test_split_capped(tmp_path):
    f = _file(tmp_path, "CONFSPLIT=500\n")
    assert paths.load(environ={"INDIMAIL_PATHS": str(f)}).conf_split == 151


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "paths.conf"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SYSCONFDIR": "/etc/x/", "QMAILHOME": "//var//mta/", "RUNDIR": "/run/./here"},
        {"CONTROLDIR": "rel/control", "QUEUE_BASE": "/q/base/", "PREFIX": "/opt/mta/"},
        {"QUEUE_COUNT": "3", "QUEUE_START": "2", "CONFSPLIT": "23", "BIGTODO": "1"},
    ],
)
def test_places_are_the_paths_as_strings(tmp_path, env):
    """The per-message commands' view (places) must name the same places as
    everyone else's (load), whatever spelling the settings use."""
    conf = tmp_path / "p.conf"
    conf.write_text("USER_QMAILQ=alice\nROOTLESS=1\n")
    environ = {"INDIMAIL_PATHS": str(conf), **env}
    full, light = (
        paths.load(environ, platform="linux"),
        paths.load_places(environ, platform="linux"),
    )
    for name in ("controldir", "qmailhome", "sysconfdir", "rundir"):
        assert getattr(light, name) == str(getattr(full, name)), name
    assert light.queue_base == str(full.queue_base)
    same = ("queue_count", "queue_start", "conf_split", "bigtodo", "users", "groups", "rootless")
    for name in same:
        assert getattr(light, name) == getattr(full, name), name
    assert light.source == str(full.source)
    assert light.user("qmailq") == full.user("qmailq") == "alice"
