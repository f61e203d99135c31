"""The per-process cache of control files: every read is validated by a stat,
so an edit, a removal or a creation is seen by the very next read, as by a
program exec'd per connection (a qmail-smtpd pool worker relies on it)."""

from __future__ import annotations

import os
import time

import pytest

from indimail.core import control


@pytest.fixture
def ctl(tmp_path):
    control.clear_cache()
    yield tmp_path
    control.clear_cache()


@pytest.fixture
def trusted(monkeypatch):
    """Files look old enough to be kept (the racy rule let through)."""
    monkeypatch.setattr(control, "RACY_NS", -(10**12))


def _path(ctl, name):
    return f"{ctl}/{name}"


def test_same_size_edit_in_the_same_second_is_seen(ctl):
    # real clock: a file changed less than RACY_NS ago is never kept, so an
    # edit within the same timestamp tick keeping size, inode, mtime and
    # ctime cannot be missed
    f = ctl / "me"
    for i in range(50):
        a, b = f"host{i % 10}a.example\n", f"host{i % 10}b.example\n"
        f.write_text(a)
        assert control.read_line("me", controldir=ctl) == a.strip()
        f.write_text(b)  # same size, same inode, same second
        assert control.read_line("me", controldir=ctl) == b.strip()
        assert control.read_list("me", controldir=ctl) == [b.strip()]
    assert _path(ctl, "me") not in control._cache


def test_old_file_is_kept_and_served_without_opening(ctl, trusted, monkeypatch):
    (ctl / "rcpthosts").write_text("a.test\nb.test\n")
    assert control.read_list("rcpthosts", controldir=ctl) == ["a.test", "b.test"]
    assert _path(ctl, "rcpthosts") in control._cache

    def no_open(*args, **kwargs):
        raise AssertionError("cached file opened again")

    monkeypatch.setattr(control.os, "open", no_open)
    items = control.read_list("rcpthosts", controldir=ctl)
    assert items == ["a.test", "b.test"]
    items.append("mutated by a caller")  # a copy: the cache is not affected
    assert control.read_list("rcpthosts", controldir=ctl) == ["a.test", "b.test"]
    assert control.read_line("rcpthosts", controldir=ctl) == "a.test"


def test_kept_file_edit_remove_create(ctl, trusted):
    f = ctl / "timeoutsmtpd"
    f.write_text("1200\n")
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 1200
    # edited in place, other size
    with open(f, "w") as fh:
        fh.write("30\n")
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 30
    # replaced by rename, same size (new inode)
    tmp = ctl / "timeoutsmtpd.tmp"
    tmp.write_text("31\n")
    os.replace(tmp, f)
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 31
    # edited in place, same size, a little later (mtime/ctime move on)
    time.sleep(0.05)
    with open(f, "r+") as fh:
        fh.write("32\n")
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 32
    # removed: the default again, and nothing kept
    f.unlink()
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 5
    assert _path(ctl, "timeoutsmtpd") not in control._cache
    # created again
    f.write_text("33\n")
    assert control.read_int("timeoutsmtpd", 5, controldir=ctl) == 33


def test_absent_file_is_looked_up_every_time(ctl, trusted):
    assert control.read_list("badmailfrom", controldir=ctl) is None
    assert control.read_line("badmailfrom", "d", controldir=ctl) == "d"
    (ctl / "badmailfrom").write_text("@spam.test\n")
    assert control.read_list("badmailfrom", controldir=ctl) == ["@spam.test"]
    assert control.exists("badmailfrom", controldir=ctl)
    assert not control.exists("badmailfrom.cdb", controldir=ctl)


def test_derived_values_follow_the_file(ctl, trusted):
    calls = []

    def build(items):
        calls.append(items)
        return frozenset(items)

    assert control.read_list_as("goodrcptto", "t", build, controldir=ctl) is None
    (ctl / "goodrcptto").write_text("a@x\n")
    assert control.read_list_as("goodrcptto", "t", build, controldir=ctl) == {"a@x"}
    assert control.read_list_as("goodrcptto", "t", build, controldir=ctl) == {"a@x"}
    assert len(calls) == 1  # built once while the file is unchanged
    tmp = ctl / "new"
    tmp.write_text("b@x\n")
    os.replace(tmp, ctl / "goodrcptto")
    assert control.read_list_as("goodrcptto", "t", build, controldir=ctl) == {"b@x"}
    assert len(calls) == 2


def test_errors_are_not_cached(ctl, trusted):
    (ctl / "me").mkdir()
    with pytest.raises(control.ControlError, match="is a directory"):
        control.read_line("me", controldir=ctl)
    os.rmdir(ctl / "me")
    (ctl / "me").write_text("mx.test\n")
    assert control.read_line("me", controldir=ctl) == "mx.test"


def _count_stats(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = os.stat

    def counting(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(control.os, "stat", counting)
    return seen


ABSENT = ["badmailfrom", "badrcptto", "goodrcptto", "tarpitcount", "relaymailfrom"]


def test_session_stats_the_directory_once_for_all_absent_files(ctl, trusted, monkeypatch):
    with control.session():  # first session: learns which files are absent
        for name in ABSENT:
            assert control.read_list(name, controldir=ctl) is None
            assert not control.exists(name + ".cdb", controldir=ctl)
    seen = _count_stats(monkeypatch)
    with control.session():
        for name in ABSENT:
            assert control.read_list(name, controldir=ctl) is None
            assert not control.exists(name + ".cdb", controldir=ctl)
    assert seen == [str(ctl)]
    # outside a session every read stats its own file, as before
    seen.clear()
    assert control.read_list("badmailfrom", controldir=ctl) is None
    assert seen == [f"{ctl}/badmailfrom"]


@pytest.mark.parametrize("how", ["create", "rename", "link", "symlink"])
def test_session_sees_a_file_created_since_the_last_one(ctl, trusted, how):
    # whatever way the file appears, the directory's key changes and the
    # next session reads it (one clock tick later: within the same tick
    # is what RACY_NS covers, tested above for files)
    with control.session():
        assert control.read_list("badmailfrom", controldir=ctl) is None
        assert not control.exists("badmailfrom.cdb", controldir=ctl)
    assert f"{ctl}/badmailfrom" in control._absent
    src = ctl.parent / f"src-{how}"
    src.write_text("spam@bad.test\n")
    time.sleep(0.05)
    if how == "create":
        (ctl / "badmailfrom").write_text("spam@bad.test\n")
    elif how == "rename":
        src.rename(ctl / "badmailfrom")
    elif how == "link":
        os.link(src, ctl / "badmailfrom")
    else:
        os.symlink(src, ctl / "badmailfrom")
    with control.session():
        assert control.read_list("badmailfrom", controldir=ctl) == ["spam@bad.test"]


def test_recently_changed_directory_is_not_trusted(ctl):
    # the directory changed just now (a file made in it): an absent file is
    # stat'ed on every read, in and out of sessions
    (ctl / "me").write_text("x\n")
    with control.session():
        assert control.read_list("badmailfrom", controldir=ctl) is None
    assert f"{ctl}/badmailfrom" not in control._absent


def test_dangling_symlink_is_never_remembered(ctl, trusted, tmp_path):
    target = tmp_path / "elsewhere" / "badmailfrom"
    target.parent.mkdir()
    os.symlink(target, ctl / "badmailfrom")
    with control.session():
        assert control.read_list("badmailfrom", controldir=ctl) is None
    # the target appears without the control directory changing
    target.write_text("spam@bad.test\n")
    with control.session():
        assert control.read_list("badmailfrom", controldir=ctl) == ["spam@bad.test"]
