"""Helpers for the packaging tests: build a package once per session, keep a
cached Debian minbase tree (debootstrap) and run scripts inside a copy of it.

Cache: ``$INDIMAIL_DEBOOTSTRAP_CACHE`` (default /var/cache/indimail-test/debootstrap)
holds ``bookworm-minbase/`` (made once by debootstrap, with a lock so that
parallel runs wait for one another) and ``archives/`` (the .debs apt
downloads for our package's dependencies, reused between runs).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("INDIMAIL_DEBOOTSTRAP_CACHE", "/var/cache/indimail-test/debootstrap"))
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def frozen_tree() -> Path:
    env = os.environ.get("INDIMAIL_FROZEN")
    return Path(env) if env else ROOT / "dist" / "indimail"


def build_package(kind: str, out: Path) -> subprocess.CompletedProcess:
    """packaging/build.py KIND, freezing first unless INDIMAIL_FROZEN is given."""
    cmd = [sys.executable, str(ROOT / "packaging" / "build.py"), kind, "--out", str(out)]
    if os.environ.get("INDIMAIL_FROZEN"):
        cmd += ["--no-freeze", "--frozen", os.environ["INDIMAIL_FROZEN"]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (sources.list or deb822)."""
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.iterdir())
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def minbase_tree() -> Path:
    """The cached minbase tree, made by debootstrap on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tree = CACHE / f"{SUITE}-minbase"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / "usr/bin/apt-get").exists() and (tree / "etc/debian_version").exists():
            return tree
        staging = CACHE / f".{SUITE}-minbase.new"
        shutil.rmtree(staging, ignore_errors=True)
        res = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(staging), host_mirror()],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"debootstrap {SUITE} from {host_mirror()} failed ({res.returncode}):\n"
                + (res.stdout + res.stderr)[-3000:]
            )
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(staging, tree)
    return tree


def copy_tree(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True, timeout=600)
    return dest


def in_tree(
    tree: Path, script: str, isolated: bool, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``script`` with bash chrooted in ``tree``, in a private mount
    namespace (its /proc goes away with it); ``isolated`` adds a network
    namespace with only loopback and a PID namespace, so nothing started
    inside can bind the machine's ports or outlive the call."""
    ns = ["unshare", "--mount", "--fork"] + (["--net", "--pid"] if isolated else [])
    setup = f"mount -t proc proc {tree}/proc && "
    if isolated:
        setup += "ip link set lo up && "
    inner = setup + 'exec chroot "$0" /bin/bash -c "$1"'
    return subprocess.run(
        [*ns, "sh", "-c", inner, str(tree), script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
