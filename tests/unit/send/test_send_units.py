"""Pure pieces of the delivery engine: retry formula, rewriting, reports, bounces."""

from __future__ import annotations

import os

import pytest

from indimail.send import bounce, spawn
from indimail.send.qmail_send import next_retry, safe_log_text
from indimail.send.rewrite import Rewriter
from support import fsync_spy


@pytest.mark.parametrize(
    ("age", "chanskip", "expect"),
    [
        (0, 10, 100),
        (99, 10, 361),
        (100, 10, 400),
        (399, 10, 841),
        (400, 10, 900),
        (0, 20, 400),
        (400, 20, 1600),
        (1600, 20, 3600),
        (-5, 20, 400),
    ],
)
def test_next_retry_formula(age, chanskip, expect):
    birth = 1_000_000
    assert next_retry(birth, birth + age, chanskip) == birth + expect


def test_safe_log_text():
    assert safe_log_text(b"did 1+0+0\n") == "did_1+0+0/"
    assert safe_log_text(b"100% \xff\tok") == "100__\x5f_ok".replace("\x5f\x5f\x5f", "___")


@pytest.fixture
def rewriter():
    return Rewriter(
        envnoathost=b"mx.example.test",
        locals={b"mx.example.test", b"localhost"},
        percenthack={b"relay.test"},
        virtualdomains={
            b"virt.test": b"virt.test",
            b"joe@special.test": b"jj",
            b".sub.test": b"subs",
            b"exc.sub.test": b"",
        },
    )


@pytest.mark.parametrize(
    ("addr", "expect"),
    [
        (b"root", ("L", b"root@mx.example.test")),
        (b"a@MX.Example.Test", ("L", b"a@MX.Example.Test")),
        (b"a@remote.test", ("R", b"a@remote.test")),
        (b"u%mx.example.test@relay.test", ("L", b"u@mx.example.test")),
        (b"u%far.test@relay.test", ("R", b"u@far.test")),
        (b"bob@virt.test", ("L", b"virt.test-bob@virt.test")),
        (b"joe@special.test", ("L", b"jj-joe@special.test")),
        (b"x@a.sub.test", ("L", b"subs-x@a.sub.test")),
        (b"x@exc.sub.test", ("R", b"x@exc.sub.test")),
    ],
)
def test_rewrite(rewriter, addr, expect):
    assert rewriter.classify(addr) == expect


def _status(code: int = 0, signal: int = 0) -> int:
    return signal if signal else code << 8


@pytest.mark.parametrize(
    ("status", "output", "expect"),
    [
        (_status(0), b"did 1+0+0\n", b"Kdid 1+0+0\n"),
        (_status(111), b"Uh-oh\n", b"ZUh-oh\n"),
        (_status(100), b"Sorry\n", b"DSorry\n"),
        (_status(75), b"x\n", b"Zx\n"),
        (_status(64), b"x\n", b"Dx\n"),
        (_status(117), b"", b"ZTrouble reading users/cdb in qmail-lspawn.\n"),
        (_status(signal=9), b"", b"Zqmail-local crashed.\n"),
    ],
)
def test_lspawn_report(status, output, expect):
    assert spawn.lspawn_report(status, output) == expect


@pytest.mark.parametrize(
    ("output", "expect"),
    [
        (b"rok\0Kaccepted\0", b"Kokaccepted"),
        (b"hno such user\0DGiving up\0", b"Dno such userGiving up"),
        (b"stry later\0DGiving up\0", b"Ztry laterGiving up"),
        (b"DSorry, no host\0", b"DSorry, no host"),
        (b"ZConnected but died\0", b"ZConnected but died"),
        (b"", b"Zqmail-remote produced no output.\n"),
    ],
)
def test_rspawn_report(output, expect):
    assert spawn.rspawn_report(_status(0), output) == expect


def test_rspawn_report_exit_codes():
    assert spawn.rspawn_report(_status(111), b"") == b"ZUnable to run qmail-remote.\n"
    assert spawn.rspawn_report(_status(1), b"") == b"DUnable to run qmail-remote.\n"
    assert spawn.rspawn_report(_status(signal=11), b"") == b"Zqmail-remote crashed.\n"


def test_parse_requests_partial_and_verp():
    buf = bytearray(b"\x05\x0012/345\0list-@lists.test-@[]\0\0\0joe@x.org\0\x06\x00")
    (req,) = spawn.parse_requests(buf)
    assert (req.slot, req.messid, req.recipient) == (5, b"12/345", b"joe@x.org")
    assert req.sender == b"list-joe=x.org@lists.test"
    assert buf == bytearray(b"\x06\x00")  # the incomplete request stays


def test_env_from_headers():
    env = spawn.env_from_headers(b"X-Spam-Status: yes\nList-Id: <l.test>\nbad line\n")
    assert env == {"X_SPAM_STATUS": "yes", "LIST_ID": "<l.test>"}


def test_bounce_entry_format():
    entry = bounce.bounce_entry(b"virt.test-bob@virt.test", b"line one\n\nafter blank")
    assert entry == b"<bob@virt.test>:\nline one\n/after blank\n\n"


def test_build_bounce_and_discards():
    cfg = bounce.BounceConfig(bouncehost=b"mx.test", doublebounceto=b"postmaster@mx.test")
    text = bounce.bounce_entry(b"x@y.test", b"Sorry.\n")
    env_sender, rcpt, data = bounce.build_bounce(
        cfg, b"s@a.test", text, b"Subject: hi\n\nb\n", 1700000000, 42, 1700000100.0
    )
    assert (env_sender, rcpt) == (b"", b"s@a.test")
    assert b"\nX-Bounced-Address: <x@y.test>\nFrom: MAILER-DAEMON@mx.test\nTo: s@a.test\n" in data
    assert b'boundary="1700000000mx.test42"' in data
    assert data.endswith(b"Return-Path: <s@a.test>\nSubject: hi\n\nb\n\n--1700000000mx.test42--\n")
    env_sender, rcpt, data = bounce.build_bounce(cfg, b"", text, b"m\n", 1, 2, 3.0)
    assert (env_sender, rcpt) == (b"#@[]", b"postmaster@mx.test")
    assert bounce.build_bounce(cfg, b"#@[]", text, b"m\n", 1, 2, 3.0) is None
    cfg.doublebounceto = b"@mx.test"
    assert bounce.build_bounce(cfg, b"", text, b"m\n", 1, 2, 3.0) is None


def test_build_bounce_strips_long_message():
    cfg = bounce.BounceConfig(bouncemaxbytes=10)
    _s, _r, data = bounce.build_bounce(
        cfg, b"s@a", b"", b"0123456789abcdef", 1, 2, 3.0, message_size=16
    )
    assert b"Return-Path: <s@a>\n0123456789\n\n--- End of message stripped.\n" in data


def test_qmail_clean_requests(tmp_path):
    from indimail.queue.layout import Layout
    from indimail.send.qmail_clean import handle

    lay = Layout(tmp_path, split=7)
    for d in ("intd", "todo", "mess/3"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "mess/3/10").write_bytes(b"m")
    (tmp_path / "intd/10").write_bytes(b"e")
    (tmp_path / "todo/10").write_bytes(b"e")
    assert handle(lay, b"todo/10") == b"+"
    assert not (tmp_path / "todo/10").exists() and not (tmp_path / "intd/10").exists()
    assert handle(lay, b"foop/10") == b"+"
    assert not (tmp_path / "mess/3/10").exists()
    assert handle(lay, b"foop/10") == b"+"  # already gone counts as done
    assert handle(lay, b"bad/10") == b"x"
    assert handle(lay, b"foop/1x") == b"x"
    assert handle(lay, b"foo") == b"x"
    os.chmod(tmp_path, 0o755)


def test_safe_log_text_every_byte():
    """The translation table agrees with the original's rule for all bytes."""
    for b in range(256):
        want = "/" if b == 0x0A else "_" if b < 0x21 or b > 0x7E or b == 0x25 else chr(b)
        assert safe_log_text(bytes([b])) == want


@pytest.mark.parametrize("bigtodo", [0, 1])
def test_queue_paths_match_layout(tmp_path, bigtodo):
    from indimail.queue.layout import Layout
    from indimail.send.todo import queue_paths

    lay = Layout(tmp_path / "queue1", split=23, bigtodo=bigtodo)
    qpath = queue_paths(lay)
    for sub in ("mess", "intd", "todo", "info", "local", "remote", "bounce", "pid"):
        for inode in (1, 22, 23, 123456789):
            assert qpath(sub, inode) == str(lay.path(sub, inode))


def test_sync_all_syncs_files_then_the_directories_given(tmp_path, monkeypatch):
    """qmail-send's commit with USE_SYNCDIR: the new files, then the
    directories holding their names; the fds are closed either way."""
    from indimail.send.todo import TodoError, sync_all

    (tmp_path / "info").mkdir()
    (tmp_path / "local").mkdir()
    fds = [os.open(tmp_path / d / "7", os.O_WRONLY | os.O_CREAT, 0o600) for d in ("info", "local")]
    files = [os.fstat(fd).st_ino for fd in fds]
    seen = fsync_spy(monkeypatch)
    sync_all(fds, [str(tmp_path / "info"), str(tmp_path / "local")])
    assert seen == files + [os.stat(tmp_path / d).st_ino for d in ("info", "local")]
    assert fds == []

    fds = [os.open(tmp_path / "info" / "8", os.O_WRONLY | os.O_CREAT, 0o600)]
    kept = fds[0]
    fsync_spy(monkeypatch, fail_dirs=True)
    with pytest.raises(TodoError, match="trouble syncing preprocessed files"):
        sync_all(fds, [str(tmp_path / "info")])
    with pytest.raises(OSError):
        os.fstat(kept)  # closed although the directory sync failed


def test_new_name_dirs_with_and_without_use_syncdir(tmp_path):
    """The directories qmail-send's commit fsyncs with USE_SYNCDIR: those of
    info/, local/ and remote/ for each message's split, each once."""
    from types import SimpleNamespace

    from indimail.queue.layout import Layout
    from indimail.send.qmail_send import Sender
    from indimail.send.todo import queue_paths

    q = tmp_path / "queue1"
    qpath = queue_paths(Layout(q, split=151, bigtodo=False))
    on = SimpleNamespace(syncdir=True, qpath=qpath)
    want = sorted(f"{q}/{sub}/{n}" for sub in ("info", "local", "remote") for n in (5, 9))
    assert Sender.new_name_dirs(on, [5, 160, 311]) == want  # 160 and 311 share split 9
    assert Sender.new_name_dirs(SimpleNamespace(syncdir=False, qpath=qpath), [5]) == []
