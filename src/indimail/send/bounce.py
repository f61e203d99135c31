"""Bounces in the original's QSBMF text inside a MIME wrapper.

``bounce/<id>`` collects one entry per permanently failed recipient
(``<rcpt>:\\n<report>\\n\\n``); when the message is done, qmail-send turns
it into one bounce to the sender, or a double bounce to ``doublebounceto``
when the sender was empty.  A bounce of a double bounce (sender ``#@[]``) is
discarded, as is a double bounce when ``doublebounceto`` starts with ``@``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from indimail.core import control
from indimail.core.dates import date822fmt

TRIPLE = b"#@[]"


@dataclass
class BounceConfig:
    """Controls that shape bounces (reread on HUP)."""

    bouncefrom: bytes = b"MAILER-DAEMON"
    bouncehost: bytes = b"me"
    doublebounceto: bytes = b"postmaster@me"
    bouncesubject: bytes = b"failure notice"
    doublebouncesubject: bytes = b"failure notice"
    bouncemessage: bytes = b""
    doublebouncemessage: bytes = b""
    bouncemaxbytes: int = 50000

    @classmethod
    def load(cls, controldir: Path) -> BounceConfig:
        def line(name: str, default: str | None = None, flagme: bool = False) -> bytes:
            v = control.read_line(name, default, controldir=controldir, flagme=flagme)
            return (v or "").encode("utf-8", "surrogateescape")

        def text(name: str) -> bytes:
            items = control.read_list(name, controldir=controldir)
            return "\n".join(items).encode("utf-8", "surrogateescape") if items else b""

        dbhost = line("doublebouncehost", flagme=True) or b"me"
        dbto = line("doublebounceto", "postmaster") + b"@" + dbhost
        return cls(
            bouncefrom=line("bouncefrom", "MAILER-DAEMON"),
            bouncehost=line("bouncehost", flagme=True) or b"me",
            doublebounceto=dbto,
            bouncesubject=line("bouncesubject", "failure notice"),
            doublebouncesubject=line("doublebouncesubject", "failure notice"),
            bouncemessage=text("bouncemessage"),
            doublebouncemessage=text("doublebouncemessage"),
            bouncemaxbytes=control.read_int("bouncemaxbytes", 50000, controldir=controldir),
        )


def strip_vdomain_prefix(recipient: bytes) -> bytes:
    """``example.com-user@example.com`` -> ``user@example.com``."""
    at = recipient.rfind(b"@")
    if at == -1:
        return recipient
    domain = recipient[at + 1 :]
    prefix = domain + b"-"
    if recipient.startswith(prefix) and len(prefix) < at + 1:
        return recipient[len(prefix) :]
    return recipient


def bounce_entry(recipient: bytes, report: bytes) -> bytes:
    """One entry of ``bounce/<id>``: ``<rcpt>:\\n<report>\\n`` + blank line."""
    rcpt = strip_vdomain_prefix(recipient).replace(b"\n", b"_")
    text = bytearray(b"<" + rcpt + b">:\n" + report)
    if report and not report.endswith(b"\n"):
        text += b"\n"
    # An empty line inside the report would end the entry: make it "/".
    for pos in range(len(text) - 2, 0, -1):
        if text[pos] == 0x0A and text[pos - 1] == 0x0A:
            text[pos] = ord("/")
    text += b"\n"
    return bytes(text)


def append_bounce(path: Path, recipient: bytes, report: bytes) -> None:
    """Append an entry to ``bounce/<id>`` (not crash-proof, as the original)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        data = memoryview(bounce_entry(recipient, report))
        while data:
            n = os.write(fd, data)
            data = data[n:]
    finally:
        os.close(fd)


def build_bounce(
    cfg: BounceConfig,
    sender: bytes,
    bounce_text: bytes,
    message: bytes,
    birth: int,
    msgid: int,
    now: float,
    program: str = "qmail-send",
    message_size: int | None = None,
) -> tuple[bytes, bytes, bytes] | None:
    """(envelope sender, recipient, bytes) of the bounce, or None to discard."""
    if sender == TRIPLE:
        return None
    if not sender and cfg.doublebounceto.startswith(b"@"):
        return None
    if sender:
        env_sender, rcpt = b"", sender
    else:
        env_sender, rcpt = TRIPLE, cfg.doublebounceto
    first = bounce_text.split(b":\n", 1)[0] if bounce_text else b""
    boundary = str(birth).encode() + cfg.bouncehost + str(msgid).encode()
    out = bytearray()
    out += b"Date: " + date822fmt(now).encode() + b"\n"
    if first:
        out += b"X-Bounced-Address: " + first + b"\n"
    out += b"From: " + cfg.bouncefrom + b"@" + cfg.bouncehost + b"\n"
    out += b"To: " + rcpt + b"\n"
    out += b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="' + boundary + b'"\n'
    out += b"Subject: " + (cfg.bouncesubject if sender else cfg.doublebouncesubject) + b"\n\n"
    out += b"--" + boundary + b"\n\n"
    if sender and cfg.bouncemessage:
        out += cfg.bouncemessage + b"\n"
    elif not sender and cfg.doublebouncemessage:
        out += cfg.doublebouncemessage + b"\n"
    else:
        out += b"Hi. This is the " + program.encode() + b" program at " + cfg.bouncehost
        if sender:
            out += (
                b".\nI'm afraid I wasn't able to deliver your message to the following "
                b"addresses.\nThis is a permanent error; I've given up. Sorry it didn't "
                b"work out.\n\n"
            )
        else:
            out += (
                b".\nI tried to deliver a bounce message to this address, but the bounce "
                b"bounced!\n\n"
            )
    out += bounce_text
    out += (
        b"--- Enclosed is a copy of the message.\n\n--"
        if sender
        else b"--- Enclosed is the original bounce.\n\n--"
    )
    out += boundary + b"\nContent-Type: message/rfc822\n\n"
    out += b"Return-Path: <" + sender + b">\n"
    limit = cfg.bouncemaxbytes
    out += message[:limit]
    size = len(message) if message_size is None else message_size
    if size > limit:
        out += b"\n\n--- End of message stripped.\n"
    out += b"\n--" + boundary + b"--\n"
    return env_sender, rcpt, bytes(out)
