"""The Received line's role of the invoking uid (alias, qmails) is looked up
again whenever /etc/passwd changes, and only then."""

from __future__ import annotations

import os
import pwd
from types import SimpleNamespace

import pytest

from indimail.core import control
from indimail.queue import qmail_queue


@pytest.fixture
def passwd(tmp_path, monkeypatch):
    f = tmp_path / "passwd"
    f.write_text("alias:x:7001:7001::/:/bin/false\n")
    monkeypatch.setattr(qmail_queue, "PASSWD", str(f))
    monkeypatch.setattr(qmail_queue, "_roles_key", None)
    monkeypatch.setattr(qmail_queue, "_roles", {})
    uids = {"alias": 7001, "qmails": 7002, "qmailq": 7003}
    calls = []

    def getpwnam(name):
        calls.append(name)
        if name not in uids:
            raise KeyError(name)
        return SimpleNamespace(pw_uid=uids[name])

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    return SimpleNamespace(file=f, uids=uids, calls=calls)


def test_role_kept_while_passwd_unchanged(passwd, monkeypatch):
    monkeypatch.setattr(control, "RACY_NS", -(10**12))  # the file looks old
    assert qmail_queue._role_of_uid(7001) == "alias"
    n = len(passwd.calls)
    assert qmail_queue._role_of_uid(7001) == "alias"
    assert len(passwd.calls) == n  # no lookup: /etc/passwd did not change
    # the alias account gets another uid: /etc/passwd changes (new inode)
    passwd.uids["alias"] = 7009
    new = passwd.file.with_name("passwd.new")
    new.write_text("alias:x:7009:7009::/:/bin/false\n")
    os.replace(new, passwd.file)
    assert qmail_queue._role_of_uid(7001) is None
    assert qmail_queue._role_of_uid(7009) == "alias"


def test_fresh_passwd_is_never_trusted(passwd):
    # changed less than RACY_NS ago: looked up every time
    assert qmail_queue._role_of_uid(7002) == "qmails"
    n = len(passwd.calls)
    passwd.uids["qmails"] = 7008
    assert qmail_queue._role_of_uid(7002) is None
    assert len(passwd.calls) > n


def test_no_passwd_file_looks_up_every_time(passwd, monkeypatch):
    monkeypatch.setattr(qmail_queue, "PASSWD", str(passwd.file) + ".absent")
    assert qmail_queue._role_of_uid(7001) == "alias"
    passwd.uids["alias"] = 1
    assert qmail_queue._role_of_uid(7001) is None
