"""RPM, FreeBSD and macOS packaging: what can be checked on this machine.

RPM: rpmbuild -bb builds it (Debian's rpm), rpm -qpl lists the binary and
the symlinks, rpm -qp --scripts shows the user and queue setup, rpmlint
reports no error.  FreeBSD / macOS: the generated pkg-plist matches the
frozen tree exactly, the launchd plist parses and names the installed
svscanboot, the rc.d and package scripts pass ``sh -n``, and user / group
names and ids agree across every package and svctool.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import packaging_support as ps
import pytest

ROOT = ps.ROOT
PKG = ROOT / "packaging"
sys.path.insert(0, str(PKG))
import build  # noqa: E402

from indimail.admin import svc_boot, svc_config  # noqa: E402


def _frozen() -> Path:
    tree = ps.frozen_tree()
    if not (tree / "indimail").is_file():
        pytest.skip(f"no frozen tree at {tree} (nox -s freeze)")
    return tree


@pytest.fixture(scope="module")
def rpm(tmp_path_factory) -> Path:
    for prog, pkg in (("rpmbuild", "rpm"), ("rpmlint", "rpmlint")):
        if not shutil.which(prog):
            pytest.skip(f"{prog} not installed (apt-get install {pkg})")
    _frozen()
    out = tmp_path_factory.mktemp("rpm")
    res = ps.build_package("rpm", out)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    rpms = sorted((out / "rpm" / "RPMS").rglob("indimail-mta-*.rpm"))
    assert rpms
    return rpms[-1]


def test_rpm_lists_binary_and_symlinks(rpm: Path) -> None:
    files = subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True).stdout
    lines = set(files.split())
    assert "/usr/lib/indimail-mta/indimail" in lines
    for cmd in build.commands(_frozen()):
        if cmd not in build.ALT_ONLY:
            assert f"/usr/bin/{cmd}" in lines, cmd
    assert "/usr/lib/systemd/system/svscan.service" in lines
    dump = subprocess.run(["rpm", "-qp", "--dump", str(rpm)], capture_output=True, text=True)
    link = next(ln for ln in dump.stdout.splitlines() if ln.startswith("/usr/bin/sendmail "))
    assert link.split()[-1] == "../lib/indimail-mta/indimail"


def test_rpm_scripts_set_up_users_and_queues(rpm: Path) -> None:
    scripts = subprocess.run(
        ["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True
    ).stdout
    pre = scripts.split("postinstall scriptlet")[0]
    for name in svc_config.USERS:
        assert re.search(rf"useradd .*\b{name}$", pre, re.M), name
    for name in svc_config.GROUPS:
        assert name in pre
    assert "create_services --no-boot" in scripts  # queues, controls, services, alternatives
    assert "qmailctl shut" in scripts and "--config=rm-alt" in scripts


def test_rpmlint_no_errors(rpm: Path) -> None:
    res = subprocess.run(
        ["rpmlint", "-r", str(PKG / "rpm" / "rpmlintrc"), str(rpm)], capture_output=True, text=True
    )
    errors = [ln for ln in res.stdout.splitlines() if ": E: " in ln]
    assert not errors, res.stdout


@pytest.fixture(scope="module")
def freebsd_port(tmp_path_factory) -> Path:
    return build.build_freebsd(_frozen(), tmp_path_factory.mktemp("fbsd"))


def test_freebsd_pkg_plist_matches_frozen_tree(freebsd_port: Path) -> None:
    tree = _frozen()
    plist = (freebsd_port / "pkg-plist").read_text().split()
    libs = sorted(p.removeprefix("lib/indimail-mta/") for p in plist if p.startswith("lib/"))
    assert libs == sorted([*build.tree_files(tree), "indimail-paths.conf"])
    bins = sorted(p.removeprefix("bin/") for p in plist if p.startswith("bin/"))
    assert bins == [c for c in build.commands(tree) if c not in build.ALT_ONLY]
    # what the port's Makefile installs from the stage is what the plist names
    stage = freebsd_port / "files" / "stage"
    assert build.tree_files(stage / "frozen") == build.tree_files(tree)
    assert (stage / "commands").read_text().split() == bins
    conf = (stage / "indimail-paths.conf").read_text()
    assert "PREFIX=/usr/local" in conf and "SYSCONFDIR=/usr/local/etc/indimail" in conf


def test_freebsd_scripts_parse_and_match_generator(freebsd_port: Path) -> None:
    rcd = PKG / "freebsd" / "files" / "svscan.in"
    assert rcd.read_text() == svc_boot.freebsd_rcd(build.platform_paths("freebsd")), (
        "packaging/freebsd/files/svscan.in is stale: regenerate it from svc_boot.freebsd_rcd"
    )
    for script in (rcd, PKG / "freebsd" / "pkg-install", PKG / "freebsd" / "pkg-deinstall"):
        res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
    text = rcd.read_text()
    assert 'rcvar="svscan_enable"' in text
    assert 'pidfile="/var/run/svscan/.svscan.pid"' in text


def test_macos_plist_parses_and_names_svscanboot() -> None:
    raw = (PKG / "macos" / "org.indimail.svscan.plist").read_bytes()
    data = plistlib.loads(raw)
    assert data["Label"] == "org.indimail.svscan"
    assert data["ProgramArguments"] == [
        "/usr/local/libexec/indimail/svscanboot",
        "/usr/local/etc/indimail/sv",
    ]
    assert data["RunAtLoad"] is True
    assert raw.decode() == svc_boot.launchd_plist(build.platform_paths("darwin"))
    for script in (PKG / "macos" / "scripts").iterdir():
        res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"


def test_macos_root_layout(tmp_path: Path) -> None:
    root = build.build_macos(_frozen(), tmp_path)
    if root.suffix == ".pkg":
        pytest.skip("built a real .pkg (macOS)")
    assert (root / "usr/local/lib/indimail-mta/indimail").is_file()
    assert os.readlink(root / "usr/local/bin/sendmail") == "../lib/indimail-mta/indimail"
    assert (root / "Library/LaunchDaemons/org.indimail.svscan.plist").is_file()
    assert (root / "usr/local/libexec/indimail/svscanboot").stat().st_mode & 0o111


def _shell_ids(text: str) -> tuple[dict[str, int], dict[str, tuple[int, str]]]:
    groups = {m[0]: int(m[1]) for m in re.findall(r"\b(\w+):(\d+)\b(?=[ \"])", text) if m}
    users = {
        m[0]: (int(m[1]), m[2])
        for m in re.findall(r"^(?:USERS=\")?(\w+):(\d+):(\w+):[\w,]*:", text, re.M)
    }
    return groups, users


def test_user_and_group_ids_agree_everywhere() -> None:
    want_users = {n: (u[0], u[1]) for n, u in svc_config.USERS.items()}
    for script in (PKG / "common" / "indimail-users.sh", PKG / "freebsd" / "pkg-install"):
        text = script.read_text()
        _groups, users = _shell_ids(text)
        assert users == want_users, script
        for name, gid in svc_config.GROUPS.items():
            assert f"{name}:{gid}" in text, (script, name)
    spec = (PKG / "rpm" / "indimail-mta.spec").read_text()
    assert "groupadd -r -g 555 indimail" in spec and "-u 555 -g indimail" in spec
    for name, (_uid, group, extra, _home) in svc_config.USERS.items():
        if name == "indimail":
            continue
        m = re.search(rf"useradd -r -M -g (\w+)(?: -G ([\w,]+))? .* {name}$", spec, re.M)
        assert m and m.group(1) == group and (m.group(2) or "") == ",".join(extra), name
    for script in (PKG / "common" / "indimail-users.sh", PKG / "macos" / "scripts" / "preinstall"):
        res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
