"""Fixtures for local-delivery tests: a home directory with a Maildir."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from indimail.deliver.qmail_local import LocalArgs, deliver


@dataclass
class Home:
    """A home dir (mode 0755, Maildir made), a control dir and a message."""

    path: Path
    controldir: Path
    env: dict[str, str] = field(default_factory=dict)

    def qmail(self, name: str, text: str | bytes, mode: int = 0o644) -> Path:
        target = self.path / name
        target.write_bytes(text.encode() if isinstance(text, str) else text)
        target.chmod(mode)
        return target

    def message(self, data: bytes) -> Path:
        msg = self.path.parent / "mess"
        msg.write_bytes(data)
        return msg

    def args(self, **kw: object) -> LocalArgs:
        base = {
            "user": "joe",
            "homedir": str(self.path),
            "local": "joe",
            "dash": "",
            "ext": "",
            "domain": "example.org",
            "sender": "sue@example.net",
            "defaultdelivery": "./Maildir/",
            "qqeh": "",
            "doit": True,
        }
        base.update(kw)
        return LocalArgs(**base)  # type: ignore[arg-type]

    def deliver(self, data: bytes, **kw: object) -> tuple[int, str]:
        """Run deliver() in-process; return (exit code, report text)."""
        msg = self.message(data)
        out = io.BytesIO()
        fd = os.open(msg, os.O_RDONLY)
        try:
            code = deliver(self.args(**kw), fd, out, environ=self.env, controldir=self.controldir)
        finally:
            os.close(fd)
        return code, out.getvalue().decode("utf-8", "replace")

    def new(self, maildir: str = "Maildir") -> list[Path]:
        return sorted((self.path / maildir / "new").iterdir())


@pytest.fixture
def home(tmp_path: Path) -> Home:
    path = tmp_path / "home" / "joe"
    for sub in ("cur", "new", "tmp"):
        (path / "Maildir" / sub).mkdir(parents=True)
    path.chmod(0o755)
    control = tmp_path / "control"
    control.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "INDIMAIL_PATHS": str(tmp_path / "none.conf"),
        "CONTROLDIR": str(control),
    }
    return Home(path, control, env)
