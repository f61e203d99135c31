"""qmail-smtpd's per-connection settings in a long-lived process (a
tcpserver pool worker): reused from an earlier session only while the
environment they were read with and every control file they came from are
unchanged, so an admin's edit still counts from the next connection."""

from __future__ import annotations

import pytest
from smtpd_harness import FakeConn

from indimail.core import control, paths
from indimail.smtpd import qmail_smtpd
from support import make_instance


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    return make_instance(tmp_path_factory.mktemp("memo") / "inst")


@pytest.fixture()
def setup(instance, monkeypatch):
    inst = instance
    env = inst.env(TCPREMOTEIP="192.0.2.7", TCPLOCALIP="192.0.2.1")
    monkeypatch.setenv("INDIMAIL_PATHS", env["INDIMAIL_PATHS"])
    paths.reload()
    control.clear_cache()
    monkeypatch.setattr(qmail_smtpd, "_CONTROLS_MEMO", [])
    monkeypatch.setattr(control, "RACY_NS", 0)  # files count as settled at once
    reads = [0]
    real = qmail_smtpd.Session._read_controls

    def counting(self, *args):
        reads[0] += 1
        return real(self, *args)

    monkeypatch.setattr(qmail_smtpd.Session, "_read_controls", counting)
    yield inst, env, reads
    for name in ("databytes", "badmailfrom"):
        (inst.control / name).unlink(missing_ok=True)
    paths.reload()
    control.clear_cache()


def session(env: dict[str, str], script: bytes = b"QUIT\r\n") -> tuple[qmail_smtpd.Session, str]:
    conn = FakeConn([script])
    s = qmail_smtpd.Session(["qmail-smtpd"], env, conn, log=[].append)
    with control.session():  # as tcpserver runs each pooled session
        s.run()
    return s, bytes(conn.sent).decode()


def test_settings_are_read_once_while_nothing_changes(setup) -> None:
    inst, env, reads = setup
    (inst.control / "databytes").write_text("1000\n")
    for _ in range(3):
        s, out = session(env)
        assert s.databytes == 1000 and out.startswith("220 ")
    assert reads[0] == 1


def test_an_edited_control_file_counts_from_the_next_session(setup) -> None:
    inst, env, reads = setup
    (inst.control / "databytes").write_text("1000\n")
    assert session(env)[0].databytes == 1000
    (inst.control / "databytes").write_text("2000\n")
    assert session(env)[0].databytes == 2000
    (inst.control / "databytes").unlink()
    assert session(env)[0].databytes == 0
    assert reads[0] == 3


def test_a_control_file_created_counts_from_the_next_session(setup) -> None:
    inst, env, reads = setup
    mail = b"HELO x\r\nMAIL FROM:<bad@example.org>\r\nQUIT\r\n"
    assert "\r\n250 ok\r\n" in session(env, mail)[1]
    assert "\r\n250 ok\r\n" in session(env, mail)[1]
    (inst.control / "badmailfrom").write_text("bad@example.org\n")
    out = session(env, mail)[1]
    assert "\r\n553 " in out and "\r\n250 ok\r\n" not in out
    assert reads[0] == 2


def test_sessions_with_other_environment_get_their_own_settings(setup) -> None:
    """tcprules may set DATABYTES, BADMAILFROM... for some clients only."""
    inst, env, reads = setup
    (inst.control / "databytes").write_text("1000\n")
    small = {**env, "DATABYTES": "500"}
    for _ in range(2):
        assert session(env)[0].databytes == 1000
        assert session(small)[0].databytes == 500
        assert session({**env, "BADMAILFROM": "otherbmf"})[0].bmf.name == "otherbmf"
    assert reads[0] == 3


def test_a_file_changed_within_the_racy_window_is_read_every_time(setup, monkeypatch) -> None:
    inst, env, reads = setup
    monkeypatch.setattr(control, "RACY_NS", 2_000_000_000)
    (inst.control / "databytes").write_text("1000\n")
    session(env)
    session(env)
    assert reads[0] == 2


def test_every_setting_read_is_kept(setup) -> None:
    """What _read_controls sets is what a reused session gets: a setting
    added there but not to CONTROL_ATTRS would be missing from reused
    sessions (AttributeError) or stale."""
    _inst, env, _reads = setup
    s = qmail_smtpd.Session(["qmail-smtpd"], env, FakeConn([b""]), log=[].append)
    before = dict(s.__dict__)
    with control.session():
        s._read_controls(qmail_smtpd._EnvReads(env), paths.get())
    changed = {k for k, v in s.__dict__.items() if k not in before or before[k] is not v}
    assert changed and changed <= set(qmail_smtpd.Session.CONTROL_ATTRS), changed
