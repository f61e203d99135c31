"""Automation: tests, lint, demo, freeze.

nox -s tests    # the whole suite (builds the frozen binary first)
nox -s lint     # ruff check + ruff format --check
nox -s demo     # a rootless instance in ./demo
nox -s freeze   # PyInstaller onedir binary + one symlink per command
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
FROZEN = ROOT / "dist" / "indimail"

# Debian packages whose programs the tests compare against: program -> package.
PEERS = {
    "cdb": "tinycdb",
    "smtp-sink": "postfix",
    "svstat": "daemontools",
    "tcprulescheck": "ucspi-tcp",
    "doveadm": "dovecot-core",
    "swaks": "swaks",
    # packaging tests
    "dh": "debhelper",
    "dpkg-scanpackages": "dpkg-dev",
    "lintian": "lintian",
    "chrpath": "chrpath",
    "debootstrap": "debootstrap",
    "rpmbuild": "rpm",
    "rpmlint": "rpmlint",
}
# Answers for packages that ask at install time (Postfix: install, do not configure).
PRESEED = [
    "postfix postfix/main_mailer_type select No configuration",
    "postfix postfix/mailname string localhost",
]


def _install_peers(session: nox.Session) -> None:
    """As root on Debian, install missing peers; otherwise their tests skip."""
    missing = sorted({pkg for prog, pkg in PEERS.items() if not shutil.which(prog)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.warn(f"not root or no apt-get: tests needing {missing} will skip")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    preseed = "\n".join(PRESEED) + "\n"
    session.run("sh", "-c", f"printf '%s' '{preseed}' | debconf-set-selections", external=True)
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over src, tests, bench, noxfile."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "packaging", "bench")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "packaging", "bench")


def _freeze(session: nox.Session) -> Path:
    session.install("-e", ".[freeze]")
    session.run("python", "packaging/pyinstaller/freeze.py", "--dist", str(ROOT / "dist"))
    return FROZEN


@nox.session(python="3.11")
def freeze(session: nox.Session) -> None:
    """Build dist/indimail/: the onedir multicall binary and its symlinks."""
    out = _freeze(session)
    session.log(f"frozen tree: {out} (binary {out / 'indimail'}, commands in {out / 'bin'})")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the whole suite against the source tree and the frozen binary."""
    _install_peers(session)
    session.install("-e", ".[test,freeze]")
    frozen = _freeze(session)
    env = {"INDIMAIL_FROZEN": str(frozen)}
    session.run("pytest", "-q", *session.posargs, env=env)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """A rootless instance in ./demo with delivery running; one message delivered."""
    session.install("-e", ".")
    top = ROOT / "demo"
    env = {"INDIMAIL_PATHS": str(top / "indimail-paths.conf")}
    session.run("python", "packaging/demo.py", str(top), env=env)


# --- packages (services and packaging issue) ---------------------------------


def _package(session: nox.Session, kind: str) -> None:
    """packaging/build.py KIND on a fresh frozen tree; prints the artifact."""
    session.install("-e", ".[freeze]")
    frozen = _freeze(session)
    session.run(
        "python",
        "packaging/build.py",
        kind,
        "--no-freeze",
        "--frozen",
        str(frozen),
        "--out",
        str(ROOT / "build" / "packages"),
    )


@nox.session(python="3.11")
def deb(session: nox.Session) -> None:
    """Debian package (dpkg-buildpackage + lintian): build/packages/deb/*.deb."""
    _package(session, "deb")


@nox.session(python="3.11")
def rpm(session: nox.Session) -> None:
    """RPM (rpmbuild -bb + rpmlint): build/packages/rpm/RPMS/<arch>/*.rpm."""
    _package(session, "rpm")


@nox.session(python="3.11")
def freebsd(session: nox.Session) -> None:
    """FreeBSD port directory with generated pkg-plist: build/packages/freebsd/."""
    _package(session, "freebsd")


@nox.session(python="3.11")
def macos(session: nox.Session) -> None:
    """macOS pkgbuild root + scripts (a .pkg on macOS): build/packages/macos/."""
    _package(session, "macos")


@nox.session(python="3.11")
def packages(session: nox.Session) -> None:
    """Every package above."""
    _package(session, "all")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Ours against a private Postfix on loopback: msg/s and Pss table (root).

    Installs postfix (smtp-source, smtp-sink) when missing, builds the frozen
    binary, runs bench/run.py (posargs: --quick, --reps N, --json PATH).
    """
    if os.geteuid() != 0:
        session.error("bench needs root: a private Postfix starts as root")
    if not all(shutil.which(p, path="/usr/sbin:/usr/bin") for p in ("postfix", "smtp-source")):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        preseed = "\n".join(PRESEED) + "\n"
        session.run("sh", "-c", f"printf '%s' '{preseed}' | debconf-set-selections", external=True)
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "postfix", external=True, env=env)
    _freeze(session)
    session.run("python", "bench/run.py", *session.posargs)
