#!/usr/bin/env python3
"""Build the indimail-mta packages from the frozen onedir tree.

    python packaging/build.py deb|rpm|freebsd|macos|all [--frozen DIR] [--out DIR]
                              [--no-freeze] [--no-lint]

Every package carries the same frozen tree (``packaging/pyinstaller/freeze.py``:
the binary, ``_internal/`` and one symlink per command) at
``PREFIX/lib/indimail-mta/``, the per-platform paths in
``indimail-paths.conf`` beside the binary (read by ``indimail.core.paths``),
``PREFIX/bin/<command>`` symlinks, ``LIBEXECDIR/svscanboot`` and the boot
files made by ``indimail.admin.svc_boot``.

* deb      dpkg-buildpackage -b on a staged copy of packaging/debian/ (+ lintian)
* rpm      rpmbuild -bb with packaging/rpm/indimail-mta.spec (+ rpmlint)
* freebsd  a port directory (Makefile, pkg-descr, generated pkg-plist, files/)
           with the staged tree under files/stage/; needs FreeBSD to build the pkg
* macos    a pkgbuild root + scripts; ``pkgbuild`` runs only on macOS

Artifacts go to ``--out`` (default ``<repo>/build/packages``); each step prints
where its artifact is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from indimail.admin import svc_boot  # noqa: E402
from indimail.core import paths as _paths  # noqa: E402

NAME = "indimail-mta"


def _fhs(platform: str) -> dict[str, str]:
    """The paths module's defaults for ``platform``, with every command in
    PREFIX/bin (they are all symlinks to the one binary)."""
    values = _paths.platform_defaults(platform)
    return {**values, "BINDIR": f"{values['PREFIX']}/bin", "SBINDIR": f"{values['PREFIX']}/bin"}


PLATFORM_PATHS = {platform: _fhs(platform) for platform in ("linux", "freebsd", "darwin")}
# Names left to update-alternatives / mailwrapper rather than shipped in bin/.
ALT_ONLY = ("mailq",)


def log(msg: str) -> None:
    print(f"build: {msg}", flush=True)


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "0.0.0"


def paths_conf(platform: str) -> str:
    """indimail-paths.conf for ``platform`` (linux, freebsd, darwin)."""
    values = PLATFORM_PATHS[platform]
    lines = [f"# {NAME}: paths of this installation ({platform}), written at packaging time"]
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def platform_paths(platform: str) -> _paths.Paths:
    """The Paths a packaged system on ``platform`` resolves (from its paths file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / _paths.PATHS_FILE
        conf.write_text(paths_conf(platform))
        return _paths.load(environ={"INDIMAIL_PATHS": str(conf)}, argv0="", platform=platform)


def libdir(platform: str) -> str:
    return f"{PLATFORM_PATHS[platform]['PREFIX']}/lib/{NAME}"


def freeze(frozen_dist: Path) -> Path:
    subprocess.run(
        [sys.executable, str(HERE / "pyinstaller" / "freeze.py"), "--dist", str(frozen_dist)],
        check=True,
    )
    return frozen_dist / "indimail"


def commands(tree: Path) -> list[str]:
    return sorted(p.name for p in (tree / "bin").iterdir() if p.is_symlink())


def tree_files(tree: Path) -> list[str]:
    """Every file and symlink of the frozen tree, relative, sorted (no hash file)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                found.append(str((base / d).relative_to(tree)))
        for f in filenames:
            rel = str((base / f).relative_to(tree))
            if rel != ".source-hash":
                found.append(rel)
    return sorted(found)


def write_boot(dest: Path, platform: str) -> dict[str, tuple[str, int]]:
    files = svc_boot.boot_files(platform_paths(platform))
    dest.mkdir(parents=True, exist_ok=True)
    for name, (text, mode) in files.items():
        (dest / name).write_text(text)
        os.chmod(dest / name, mode)
    return files


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, **kw)


# --- Debian -----------------------------------------------------------------


def build_deb(tree: Path, out: Path, lint: bool = True) -> Path:
    started = time.monotonic()
    ver = version()
    work = out / "deb"
    shutil.rmtree(work, ignore_errors=True)
    src = work / f"{NAME}-{ver}"
    shutil.copytree(HERE / "debian", src / "debian", symlinks=True)
    shutil.copytree(tree, src / "frozen", symlinks=True)
    (src / "indimail-paths.conf").write_text(paths_conf("linux"))
    (src / "commands").write_text("\n".join(commands(tree)) + "\n")
    files = write_boot(src / "boot", "linux")
    (src / "debian" / f"{NAME}.svscan.init").write_text(files["svscan.init"][0])
    (src / "debian" / f"{NAME}.svscan.service").write_text(files["systemd"][0])
    res = run(["dpkg-buildpackage", "-b", "-us", "-uc", "--no-sign"], cwd=src)
    if res.returncode != 0:
        sys.exit(f"build: dpkg-buildpackage failed ({res.returncode})")
    debs = sorted(work.glob(f"{NAME}_{ver}*.deb"))
    if not debs:
        sys.exit("build: no .deb produced")
    deb = debs[-1]
    log(f"deb built in {time.monotonic() - started:.1f} s")
    if lint and shutil.which("lintian"):
        res = run(
            ["lintian", "--fail-on", "error", "--info", str(deb)],
            capture_output=True,
            text=True,
        )
        (work / "lintian.txt").write_text(res.stdout + res.stderr)
        errors = [ln for ln in res.stdout.splitlines() if ln.startswith("E:")]
        warnings = sorted(
            {ln.split(" [")[0] for ln in res.stdout.splitlines() if ln.startswith("W:")}
        )
        for ln in errors + warnings:
            log(f"lintian: {ln}")
        if res.returncode != 0 or errors:
            sys.exit(f"build: lintian reports errors (see {work / 'lintian.txt'})")
    log(f"deb: {deb}")
    return deb


# --- RPM ----------------------------------------------------------------------


def build_rpm(tree: Path, out: Path, lint: bool = True) -> Path:
    started = time.monotonic()
    ver = version()
    top = out / "rpm"
    shutil.rmtree(top, ignore_errors=True)
    stage = top / "STAGE"
    for d in ("BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS", "BUILDROOT"):
        (top / d).mkdir(parents=True)
    shutil.copytree(tree, stage / "frozen", symlinks=True)
    (stage / "indimail-paths.conf").write_text(paths_conf("linux"))
    (stage / "commands").write_text("\n".join(commands(tree)) + "\n")
    write_boot(stage / "boot", "linux")
    users_sh = HERE / "common" / "indimail-users.sh"
    shutil.copy2(users_sh, stage / "indimail-users.sh")
    spec = top / "SPECS" / f"{NAME}.spec"
    shutil.copy2(HERE / "rpm" / f"{NAME}.spec", spec)
    cmd = [
        "rpmbuild",
        "-bb",
        "--define",
        f"_topdir {top}",
        "--define",
        f"stagedir {stage}",
        "--define",
        f"pkgversion {ver}",
        "--define",
        "_build_id_links none",
        "--nodeps",
        str(spec),
    ]
    res = run(cmd)
    if res.returncode != 0:
        sys.exit(f"build: rpmbuild failed ({res.returncode})")
    rpms = sorted((top / "RPMS").rglob(f"{NAME}-{ver}*.rpm"))
    if not rpms:
        sys.exit("build: no .rpm produced")
    rpm = rpms[-1]
    log(f"rpm built in {time.monotonic() - started:.1f} s")
    if lint and shutil.which("rpmlint"):
        res = run(
            ["rpmlint", "-r", str(HERE / "rpm" / "rpmlintrc"), str(rpm)],
            capture_output=True,
            text=True,
        )
        sys.stdout.write(res.stdout)
        if res.returncode not in (0, 64, 66) or " E: " in res.stdout:
            sys.exit("build: rpmlint reports errors")
    log(f"rpm: {rpm}")
    return rpm


# --- FreeBSD --------------------------------------------------------------------


def freebsd_plist(tree: Path) -> str:
    """pkg-plist: the frozen tree under lib/indimail-mta, the bin symlinks, boot."""
    lines = [f"lib/{NAME}/{f}" for f in tree_files(tree)]
    lines.append(f"lib/{NAME}/indimail-paths.conf")
    lines += [f"bin/{c}" for c in commands(tree) if c not in ALT_ONLY]
    lines.append("libexec/indimail/svscanboot")
    lines += [f"share/indimail/boot/{n}" for n in ("svscan.rcd", "svscan.plist", "systemd")]
    return "\n".join(sorted(lines)) + "\n"


def build_freebsd(tree: Path, out: Path) -> Path:
    port = out / "freebsd" / NAME
    shutil.rmtree(port.parent, ignore_errors=True)
    shutil.copytree(HERE / "freebsd", port, symlinks=True)
    stage = port / "files" / "stage"
    shutil.copytree(tree, stage / "frozen", symlinks=True)
    (stage / "frozen" / ".source-hash").unlink(missing_ok=True)
    (stage / "indimail-paths.conf").write_text(paths_conf("freebsd"))
    (stage / "commands").write_text(
        "\n".join(c for c in commands(tree) if c not in ALT_ONLY) + "\n"
    )
    write_boot(stage / "boot", "freebsd")
    (port / "pkg-plist").write_text(freebsd_plist(tree))
    mk = port / "Makefile"
    mk.write_text(mk.read_text().replace("@VERSION@", version()))
    log(f"freebsd port: {port} (build it on FreeBSD: make -C {port.name} package)")
    return port


# --- macOS ------------------------------------------------------------------------


def build_macos(tree: Path, out: Path) -> Path:
    work = out / "macos"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    lib = root / libdir("darwin").lstrip("/")
    shutil.copytree(tree, lib, symlinks=True)
    (lib / ".source-hash").unlink(missing_ok=True)
    (lib / "indimail-paths.conf").write_text(paths_conf("darwin"))
    bindir = root / "usr/local/bin"
    bindir.mkdir(parents=True)
    for c in commands(tree):
        if c not in ALT_ONLY:
            (bindir / c).symlink_to(f"../lib/{NAME}/indimail")
    files = write_boot(root / "usr/local/share/indimail/boot", "darwin")
    libexec = root / "usr/local/libexec/indimail"
    libexec.mkdir(parents=True)
    (libexec / "svscanboot").write_text(files["svscanboot"][0])
    os.chmod(libexec / "svscanboot", 0o755)
    daemons = root / "Library/LaunchDaemons"
    daemons.mkdir(parents=True)
    shutil.copy2(HERE / "macos" / f"{svc_boot.LAUNCHD_LABEL}.plist", daemons)
    scripts = work / "scripts"
    shutil.copytree(HERE / "macos" / "scripts", scripts)
    shutil.copy2(HERE / "common" / "indimail-users.sh", scripts / "indimail-users.sh")
    pkg = work / f"{NAME}-{version()}.pkg"
    if shutil.which("pkgbuild"):
        res = run(
            [
                "pkgbuild",
                "--root",
                str(root),
                "--scripts",
                str(scripts),
                "--identifier",
                "org.indimail.indimail-mta",
                "--version",
                version(),
                str(pkg),
            ]
        )
        if res.returncode != 0:
            sys.exit("build: pkgbuild failed")
        log(f"macos: {pkg}")
        return pkg
    log(f"macos: pkgbuild root {root} and scripts {scripts} (pkgbuild runs on macOS only)")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("deb", "rpm", "freebsd", "macos", "all"))
    ap.add_argument("--frozen", type=Path, default=None, help="frozen tree (dist/indimail)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "packages")
    ap.add_argument("--no-freeze", action="store_true", help="use --frozen as it is")
    ap.add_argument("--no-lint", action="store_true")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.no_freeze:
        tree = (args.frozen or ROOT / "dist" / "indimail").resolve()
    else:
        dist = args.frozen.resolve().parent if args.frozen else ROOT / "dist"
        tree = freeze(dist)
    if not (tree / "indimail").is_file():
        sys.exit(f"build: no frozen binary in {tree}")
    what = ("deb", "rpm", "freebsd", "macos") if args.what == "all" else (args.what,)
    lint = not args.no_lint
    for w in what:
        if w == "deb":
            build_deb(tree, out, lint)
        elif w == "rpm":
            build_rpm(tree, out, lint)
        elif w == "freebsd":
            build_freebsd(tree, out)
        else:
            build_macos(tree, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
