"""Helpers shared by tests (imported as ``support``; tests/ is on sys.path).

The one place for them: a module named ``conftest`` exists in several test
folders, so ``from conftest import`` would be ambiguous."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INDIMAIL = Path(sys.executable).parent / "indimail"


@dataclass
class Instance:
    """A rootless instance made by ``indimail-instance`` in a temp dir."""

    top: Path

    @property
    def conf(self) -> Path:
        return self.top / "indimail-paths.conf"

    @property
    def bin(self) -> Path:
        return self.top / "bin"

    @property
    def control(self) -> Path:
        return self.top / "etc" / "control"

    @property
    def queue_base(self) -> Path:
        return self.top / "var" / "queue"

    def queue(self, n: int) -> Path:
        return self.queue_base / f"queue{n}"

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment pointing every command at this instance."""
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.top / "home"),
            "INDIMAIL_PATHS": str(self.conf),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(
        self,
        cmd: str,
        *args: str,
        input: bytes | None = None,
        env: dict | None = None,
        timeout: float = 60,
        **popen,
    ) -> subprocess.CompletedProcess:
        """Run ``bin/cmd args`` with this instance's environment."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(
            [str(self.bin / cmd), *args],
            input=input,
            env=env if env is not None else self.env(),
            timeout=timeout,
            **popen,
        )

    def files(self, sub: str) -> list[Path]:
        """Every regular file under ``queueN/sub`` of all queues."""
        found = []
        for q in sorted(self.queue_base.glob("queue*")):
            found += [p for p in (q / sub).rglob("*") if p.is_file()]
        return found


def make_instance(top: Path, queues: int = 2, fqdn: str = "mx.example.test") -> Instance:
    res = subprocess.run(
        [str(INDIMAIL), "indimail-instance", "-q", str(queues), "-H", fqdn, str(top)],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    return Instance(top)


def need_program(name: str, package: str) -> str:
    """Path of ``name``, or skip naming the Debian package that brings it."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return found


def clean_env_without_python() -> dict[str, str]:
    """PATH with no python on it, for frozen-binary tests."""
    return {"PATH": "/usr/bin:/bin" if not os.path.exists("/usr/bin/python3") else "/nonexistent"}
