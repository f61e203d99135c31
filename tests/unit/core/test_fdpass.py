"""payload_pipe: the bytes are there to read, and the fd is never 3."""

from __future__ import annotations

import os

from indimail.core.fdpass import payload_pipe


def test_payload_readable_then_eof() -> None:
    r = payload_pipe(b"user\0secret\0\0")
    try:
        assert os.read(r, 100) == b"user\0secret\0\0"
        assert os.read(r, 100) == b""
    finally:
        os.close(r)


def test_never_fd_3() -> None:
    # free fd 3 (if taken) so the pipe's read end would land on it
    saved = None
    try:
        saved = os.dup(3)
        os.close(3)
    except OSError:
        saved = None
    try:
        r = payload_pipe(b"x")
        assert r != 3
        assert os.read(r, 10) == b"x"
        os.close(r)
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
