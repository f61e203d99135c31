"""Control files: first line, lists, comments, defaults, me fallback, errors."""

from __future__ import annotations

import pytest

from indimail.core import control


@pytest.fixture
def ctl(tmp_path):
    return tmp_path


def test_read_line_strips_trailing_blanks(ctl):
    (ctl / "me").write_bytes(b"mx.example.test \t\nsecond line\n")
    assert control.read_line("me", controldir=ctl) == "mx.example.test"


def test_missing_gives_default_or_me(ctl):
    assert control.read_line("helohost", "x", controldir=ctl) == "x"
    (ctl / "me").write_text("mx.example.test\n")
    assert control.read_line("helohost", controldir=ctl, flagme=True) == "mx.example.test"
    assert control.read_list("rcpthosts", controldir=ctl) is None
    assert control.read_list("locals", controldir=ctl, flagme=True) == ["mx.example.test"]


def test_list_skips_comments_and_blanks(ctl):
    (ctl / "rcpthosts").write_text("# mine\nexample.test  \n\n.example.org\n#x\nlast")
    assert control.read_list("rcpthosts", controldir=ctl) == [
        "example.test",
        ".example.org",
        "last",
    ]


def test_empty_file_is_empty_not_missing(ctl):
    (ctl / "locals").write_text("")
    assert control.read_list("locals", controldir=ctl, flagme=True) == []
    assert control.read_line("locals", "d", controldir=ctl) == ""


def test_read_int(ctl):
    (ctl / "databytes").write_text("20971520\n")
    assert control.read_int("databytes", 0, controldir=ctl) == 20971520
    assert control.read_int("concurrencylocal", 10, controldir=ctl) == 10
    (ctl / "timeoutsmtpd").write_text("soon\n")
    with pytest.raises(control.ControlError) as exc:
        control.read_int("timeoutsmtpd", 1200, controldir=ctl)
    assert str(ctl / "timeoutsmtpd") in exc.value.message


def test_unreadable_is_error_not_default(ctl):
    # A symlink loop exists but cannot be opened (ELOOP), even for root.
    (ctl / "rcpthosts").symlink_to("rcpthosts")
    with pytest.raises(control.ControlError) as exc:
        control.read_list("rcpthosts", controldir=ctl)
    assert str(ctl / "rcpthosts") in exc.value.message


def test_directory_is_error(ctl):
    (ctl / "rcpthosts").mkdir()
    with pytest.raises(control.ControlError) as exc:
        control.read_list("rcpthosts", controldir=ctl)
    assert "is a directory" in exc.value.message


def test_absolute_name(ctl):
    f = ctl / "elsewhere"
    f.write_text("v\n")
    assert control.read_line(str(f), controldir=ctl / "nope") == "v"
