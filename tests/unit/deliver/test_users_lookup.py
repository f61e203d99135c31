"""qmail-newu, users/cdb lookup (find_user) and qmail-getpw."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from indimail.core import cdb
from indimail.core import paths as _paths
from indimail.core.errors import Fatal
from indimail.deliver import qmail_newu, users
from indimail.deliver.users import UserEntry, find_user
from support import fsync_spy

INDIMAIL = str(Path(sys.executable).parent / "indimail")

ASSIGN = """\
=joe:joe:1001:1001:/home/joe:::
=Joe-Special:jspec:1002:1002:/home/jspec:-:sp:
+joe-:joe:1001:1001:/home/joe:-::
+dom.example-:indimail:555:555:/var/indimail/domains/dom.example:-::
+list=:lists:1003:1003:/home/lists:-:pre-:
+:alias:7790:2108:/var/indimail/alias:-::
.
ignored: after the dot
"""


def _paths_for(tmp_path: Path, assign: str = ASSIGN) -> _paths.Paths:
    conf = tmp_path / "paths.conf"
    conf.write_text(f"SYSCONFDIR={tmp_path}\nASSIGNDIR={tmp_path / 'users'}\n")
    (tmp_path / "users").mkdir(exist_ok=True)
    (tmp_path / "users" / "assign").write_text(assign)
    qmail_newu.build(tmp_path / "users")
    return _paths.load(environ={"INDIMAIL_PATHS": str(conf)})


def test_newu_syncs_the_new_cdb_and_its_directory(tmp_path, monkeypatch) -> None:
    """The rename of cdb.tmp to cdb is made durable; a directory that cannot
    be synced does not fail the build (the new cdb is already in place)."""
    users_dir = tmp_path / "users"
    users_dir.mkdir()
    (users_dir / "assign").write_text(ASSIGN)
    seen = fsync_spy(monkeypatch)
    assert qmail_newu.build(users_dir) == 6
    assert seen[-1] == users_dir.stat().st_ino
    seen = fsync_spy(monkeypatch, fail_dirs=True)
    assert qmail_newu.build(users_dir) == 6
    assert seen[-1] == users_dir.stat().st_ino
    assert (users_dir / "cdb").is_file() and not (users_dir / "cdb.tmp").exists()


def test_newu_records(tmp_path) -> None:
    _paths_for(tmp_path)
    with cdb.Reader(tmp_path / "users" / "cdb") as r:
        items = list(r.iter_items())
    assert items == [
        (b"!joe\0", b"joe\x001001\x001001\x00/home/joe\0\0"),
        (b"!joe-special\0", b"jspec\x001002\x001002\x00/home/jspec\0-\0sp"),
        (b"!joe-", b"joe\x001001\x001001\x00/home/joe\0-\0"),
        (b"!dom.example-", b"indimail\x00555\x00555\x00/var/indimail/domains/dom.example\0-\0"),
        (b"!list=", b"lists\x001003\x001003\x00/home/lists\0-\0pre-"),
        (b"!", b"alias\x007790\x002108\x00/var/indimail/alias\0-\0"),
        (b"", b"-="),
    ]
    assert not (tmp_path / "users" / "cdb.tmp").exists()


@pytest.mark.parametrize(
    ("local", "expect"),
    [
        ("joe", UserEntry("joe", 1001, 1001, "/home/joe", "", "")),
        ("JOE", UserEntry("joe", 1001, 1001, "/home/joe", "", "")),
        ("Joe-Special", UserEntry("jspec", 1002, 1002, "/home/jspec", "-", "sp")),
        ("joe-Foo-bar", UserEntry("joe", 1001, 1001, "/home/joe", "-", "Foo-bar")),
        (
            "dom.example-Alice",
            UserEntry("indimail", 555, 555, "/var/indimail/domains/dom.example", "-", "Alice"),
        ),
        ("list=x", UserEntry("lists", 1003, 1003, "/home/lists", "-", "pre-x")),
        ("postmaster", UserEntry("alias", 7790, 2108, "/var/indimail/alias", "-", "postmaster")),
        # prefix must end in a break char listed in the wildcard list
        ("joex", UserEntry("alias", 7790, 2108, "/var/indimail/alias", "-", "joex")),
    ],
)
def test_find_user_cdb(tmp_path, local, expect) -> None:
    assert find_user(local, _paths_for(tmp_path)) == expect


def test_longest_prefix_wins(tmp_path) -> None:
    p = _paths_for(
        tmp_path,
        "+a-:short:1:1:/s:-::\n+a-b-:long:2:2:/l:-::\n.\n",
    )
    assert find_user("a-b-c", p) == UserEntry("long", 2, 2, "/l", "-", "c")
    assert find_user("a-x", p) == UserEntry("short", 1, 1, "/s", "-", "x")


def test_exact_beats_wildcard(tmp_path) -> None:
    p = _paths_for(tmp_path, "+a-:w:1:1:/w:-::\n=a-b:e:2:2:/e:::\n.\n")
    assert find_user("a-b", p).user == "e"
    assert find_user("a-c", p).user == "w"


def test_corrupt_cdb(tmp_path) -> None:
    p = _paths_for(tmp_path)
    (tmp_path / "users" / "cdb").write_bytes(b"garbage")
    with pytest.raises(users.UserLookupError) as info:
        find_user("joe", p)
    assert info.value.code == users.QLX_CDB


def test_cdb_without_wildcard_key(tmp_path) -> None:
    p = _paths_for(tmp_path)
    cdb.make_from_pairs(tmp_path / "users" / "cdb", tmp_path / "users" / "t", [(b"!x\0", b"a")])
    with pytest.raises(users.UserLookupError):
        find_user("x", p)


def test_passwd_fallback(tmp_path, monkeypatch) -> None:
    p = _paths_for(tmp_path, ".\n")
    os.unlink(tmp_path / "users" / "cdb")
    me = pwd.getpwuid(os.getuid())
    fake_home = tmp_path / "fakehome"
    fake_home.mkdir()
    accounts = {
        "bob": pwd.struct_passwd(
            ("bob", "x", os.getuid() or 1, 100, "", str(fake_home), "/bin/sh")
        ),
        "rooty": pwd.struct_passwd(("rooty", "x", 0, 0, "", str(fake_home), "/bin/sh")),
        "alias": pwd.struct_passwd(("alias", "x", 7790, 2108, "", "/var/alias", "/bin/sh")),
    }

    def getpwnam(name):
        return accounts[name]

    monkeypatch.setattr(users.pwd, "getpwnam", getpwnam)
    if me.pw_uid == 0:
        # bob's home must be owned by bob's uid (1 here): pretend it is.
        real_stat = os.stat

        def fake_stat(path, *a, **k):
            st = real_stat(path, *a, **k)
            if os.fspath(path) == str(fake_home):
                return os.stat_result(
                    (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 1, 1, st.st_size, 0, 0, 0)
                )
            return st

        monkeypatch.setattr(users.os, "stat", fake_stat)
    bob_uid = accounts["bob"].pw_uid
    assert find_user("Bob", p) == UserEntry("bob", bob_uid, 100, str(fake_home), "", "")
    assert find_user("bob-Ext-x", p) == UserEntry("bob", bob_uid, 100, str(fake_home), "-", "Ext-x")
    # uid 0 is never a mail user: falls to alias
    assert find_user("rooty", p) == UserEntry("alias", 7790, 2108, "/var/alias", "-", "rooty")
    assert find_user("nobody-here", p).user == "alias"
    del accounts["alias"]
    assert find_user("nobody-here", p) is None


@pytest.mark.parametrize(
    ("assign", "message"),
    [
        ("=joe:joe:1:1:/h:::\n", "line 2: missing the final '.' line"),
        ("=joe:joe:1:1:/h:::\n.", None),
        ("=joe:joe:1:1:/h:::", "line 1: no newline at end of file"),
        ("=joe:joe:1:1:/h::\n.\n", "line 1: needs 6 fields"),
        ("joe\n.\n", "line 1: no ':'"),
        (":joe:1:1:/h:::\n.\n", "line 1: line starts with ':'"),
        ("=joe:joe:x:1:/h:::\n.\n", "line 1: uid and gid must be numbers"),
        ("=joe:joe:1:1:h:::\n.\n", "line 1: home must be an absolute path"),
        ("=a:a:1:1:/h:::\n=b\0:b:1:1:/h:::\n.\n", "line 2: NUL byte"),
        ("joe:joe:1:1:/h:::\n.\n", "line 1: line must start with '=' or '+'"),
    ],
)
def test_newu_bad_lines(assign, message) -> None:
    if message is None:
        qmail_newu.parse_assign(assign.encode())
        return
    with pytest.raises(Fatal) as info:
        qmail_newu.parse_assign(assign.encode())
    assert info.value.code == 111
    assert message in info.value.message


def test_newu_command_keeps_old_cdb_on_error(tmp_path) -> None:
    d = tmp_path / "users"
    d.mkdir()
    (d / "assign").write_text("=a:a:1:1:/h:::\n.\n")
    env = {"PATH": "/usr/bin:/bin", "ASSIGNDIR": str(d)}
    res = subprocess.run([INDIMAIL, "qmail-newu", str(d)], capture_output=True, env=env)
    assert res.returncode == 0, res.stderr
    before = (d / "cdb").read_bytes()
    (d / "assign").write_text("=a:a:1:1:/h:::\nbroken\n.\n")
    res = subprocess.run([INDIMAIL, "qmail-newu", str(d)], capture_output=True, env=env)
    assert res.returncode == 111
    assert res.stderr.decode() == (
        f"qmail-newu: fatal: bad format in {d}/assign line 2: no ':' in 'broken'\n"
    )
    assert (d / "cdb").read_bytes() == before
    assert not (d / "cdb.tmp").exists()
    res = subprocess.run(
        [INDIMAIL, "qmail-newu", str(tmp_path / "nodir")], capture_output=True, env=env
    )
    assert res.returncode == 111


def test_instance_user_resolves_to_instance_home(instance) -> None:
    res = instance.run("qmail-newu")
    assert res.returncode == 0, res.stderr
    p = _paths.load(environ={"INDIMAIL_PATHS": str(instance.conf)})
    me = pwd.getpwuid(os.getuid())
    entry = find_user(me.pw_name, p)
    assert entry == UserEntry(
        me.pw_name, me.pw_uid, me.pw_gid, str(instance.top.resolve() / "home" / me.pw_name), "", ""
    )


def test_getpw_command(instance) -> None:
    me = pwd.getpwuid(os.getuid())
    res = instance.run("qmail-getpw")
    assert res.returncode == 100
    res = instance.run("qmail-getpw", "no-such-user-xyz")
    # the alias role maps to the invoking user in a rootless instance
    assert res.returncode == 0, res.stderr
    fields = res.stdout.split(b"\0")
    assert fields[0] == me.pw_name.encode()
    assert fields[4:] == [b"-", b"no-such-user-xyz", b""]


def test_cdb_cache_matches_find_user_and_sees_rebuilds(tmp_path) -> None:
    """The spawner's cache answers as lookup_cdb, and a qmail-newu rebuild
    (a new file renamed into place) is seen by the next lookup."""
    p = _paths_for(tmp_path)
    cache = users.CdbCache(p.assigndir / "cdb")
    for local in ("joe", "JOE", "Joe-Special", "joe-Foo-bar", "list=x", "postmaster", "joex"):
        assert cache.lookup(local) == users.lookup_cdb(local, p.assigndir / "cdb")
        assert cache.lookup(local) == find_user(local, p)  # the second answer is cached
    (tmp_path / "users" / "assign").write_text("=joe:other:1:1:/o:::\n.\n")
    qmail_newu.build(tmp_path / "users")
    assert cache.lookup("joe") == UserEntry("other", 1, 1, "/o", "", "")
    assert cache.lookup("postmaster") is None  # no entry: the password database decides


def test_cdb_cache_missing_and_broken(tmp_path) -> None:
    p = _paths_for(tmp_path)
    cache = users.CdbCache(p.assigndir / "cdb")
    (tmp_path / "users" / "cdb").unlink()
    assert cache.lookup("joe") is None  # as lookup_cdb: no cdb, no entry
    (tmp_path / "users" / "cdb").write_bytes(b"garbage")
    # a broken file is left to the delivery, which reports QLX_CDB
    assert cache.lookup("joe") is users.CdbCache.UNKNOWN
    with pytest.raises(users.UserLookupError):
        find_user("joe", p)
