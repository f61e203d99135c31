#!/usr/bin/env python3
"""Freeze indimail-mta into one PyInstaller *onedir* multicall binary.

    python packaging/pyinstaller/freeze.py [--dist DIR] [--work DIR] [--force]

Result, under ``DIR`` (default ``<repo>/dist``)::

    indimail/indimail          the binary (needs no Python on the host)
    indimail/_internal/        libpython, extension modules, the modules as .pyc
    indimail/bin/<command>     one relative symlink ``../indimail`` per command
    indimail/.source-hash      what the tree was built from

The command modules are imported lazily (``importlib`` in ``indimail.cli``),
so PyInstaller cannot see them: every module of ``src/indimail`` is named
as a hidden import, found by walking the source tree (nothing is imported),
and so are the modules of the third-party packages the commands use, when
they are installed.

A build is skipped when the source tree, this script, the entry script, the
Python and PyInstaller versions and the bundled packages' versions all hash
to the value stored in ``.source-hash``; ``--force`` rebuilds.  PyInstaller's
spec and work files go under ``--work`` (default ``<repo>/build/pyinstaller``).

Start-up matters (qmail runs a process per message), so the script keeps the
binary lean: stdlib parts no command uses are excluded, and PyInstaller
runtime hooks that would run at every start for nothing are dropped.  Both
are undone automatically when ``src/indimail`` starts to use what they remove.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = ROOT / "src"
PACKAGE = "indimail"
ENTRY = HERE / "indimail_entry.py"
NAME = "indimail"
HASH_FILE = ".source-hash"

# Third-party packages the commands import (several of them lazily, so the
# analysis would miss them): bundled whole when installed, skipped otherwise.
OPTIONAL_PACKAGES = ("dkim", "dns", "cryptography", "idna", "pymysql")

# Sub-packages and modules of bundled packages that are never wanted
# (test suites; ``dkim/__main__.py`` runs dkimpy's unittest suite).
SKIP_PARTS = {"tests", "test", "testing", "__main__", "__pycache__"}

# Modules no command uses, left out of the bundle.  Each one is kept after
# all if a file under src/indimail matches its pattern (an import of it).
_IMPORT = r"^\s*(?:import|from)\s+{name}(?:[\s.,;]|$)|import_module\(\s*['\"]{name}\b"
EXCLUDES: dict[str, str] = {
    name: _IMPORT.format(name=re.escape(name))
    for name in (
        "tkinter",
        "_tkinter",
        "turtle",
        "turtledemo",
        "idlelib",
        "test",
        "unittest",
        "doctest",
        "pydoc",
        "pydoc_data",
        "lib2to3",
        "ensurepip",
        "venv",
        "distutils",
        "setuptools",
        "pkg_resources",
        "_distutils_hack",
        "pip",
        "PyInstaller",
        "pytest",
        "_pytest",
        "hypothesis",
        "nox",
        "multiprocessing",
        "ctypes",
    )
}
# concurrent.futures.ProcessPoolExecutor needs multiprocessing too.
EXCLUDES["multiprocessing"] += r"|ProcessPoolExecutor"

# Windows-only modules of bundled packages, left out elsewhere: dns.resolver
# imports dns.win32util only on Windows, and it pulls in ctypes; whenever
# ctypes is bundled, PyInstaller's bootstrap imports it at every start (~3 ms;
# daemontools/service.py calls prctl through _ctypes for that reason).
WINDOWS_ONLY = ("dns.win32util",)

# PyInstaller runtime hooks that run at *every* start, and what in our code
# would need them.  pyi_rth_inspect imports inspect + zipfile and lists
# base_library.zip (~20 ms a start) only so that inspect.getsource() and
# friends work on frozen code; pyi_rth_pkgutil teaches pkgutil.iter_modules
# about the frozen archive; pyi_rth_multiprocessing patches multiprocessing.
DROP_RTHOOKS: dict[str, str] = {
    "pyi_rth_inspect": (
        r"\b(?:getsource|getsourcefile|getsourcelines|findsource|getframeinfo"
        r"|getouterframes|getinnerframes|getfile|getmodule)\b|inspect\.(?:stack|trace)\b"
    ),
    "pyi_rth_pkgutil": r"\b(?:iter_modules|walk_packages)\b",
    "pyi_rth_multiprocessing": EXCLUDES["multiprocessing"],
}


def log(msg: str) -> None:
    print(f"freeze: {msg}", flush=True)


def source_files() -> list[Path]:
    """Files under src/ that go into the build (no caches, no egg-info)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(SRC):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d != "__pycache__" and not d.startswith(".") and not d.endswith(".egg-info")
        )
        for fn in sorted(filenames):
            if fn.endswith((".pyc", ".pyo")) or fn.startswith("."):
                continue
            found.append(Path(dirpath) / fn)
    return found


def package_python_sources() -> list[Path]:
    return [p for p in source_files() if p.suffix == ".py" and PACKAGE in p.relative_to(SRC).parts]


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def dist_version(module: str) -> str | None:
    """Installed version of the distribution providing ``module``, or None."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in _packages_distributions().get(module, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def pyinstaller_version() -> str:
    try:
        return importlib.metadata.version("pyinstaller")
    except importlib.metadata.PackageNotFoundError:
        return ""


def source_hash() -> str:
    """Hash of everything a build depends on."""
    h = hashlib.sha256()
    h.update(f"python {sys.version} {sys.platform}\n".encode())
    h.update(f"pyinstaller {pyinstaller_version()}\n".encode())
    for mod in OPTIONAL_PACKAGES:
        h.update(f"{mod} {dist_version(mod)}\n".encode())
    for path in [*source_files(), Path(__file__).resolve(), ENTRY]:
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def walk_modules(package: str, locations: list[Path]) -> list[str]:
    """Dotted names of ``package`` and every module below it, from the files."""
    names = [package]
    for loc in locations:
        for entry in sorted(loc.iterdir()):
            stem = entry.name.split(".", 1)[0]
            if stem in SKIP_PARTS or not stem.isidentifier():
                continue
            if entry.is_dir():
                if (entry / "__init__.py").exists():
                    names += walk_modules(f"{package}.{stem}", [entry])
            elif entry.suffix in (".py", ".so", ".pyd") and stem != "__init__":
                names.append(f"{package}.{stem}")
    return sorted(set(names))


def hidden_imports() -> tuple[list[str], list[str]]:
    """(hidden imports, bundled optional packages)."""
    names = walk_modules(PACKAGE, [SRC / PACKAGE])
    bundled = []
    for mod in OPTIONAL_PACKAGES:
        if dist_version(mod) is None:
            log(f"{mod} is not installed: not bundled")
            continue
        spec = importlib.util.find_spec(mod)
        assert spec is not None
        locations = [Path(p) for p in (spec.submodule_search_locations or [])]
        names += walk_modules(mod, locations) if locations else [mod]
        bundled.append(mod)
    if not sys.platform.startswith("win"):
        names = [n for n in names if n not in WINDOWS_ONLY]
    return names, bundled


def package_data() -> list[tuple[str, str]]:
    """Non-Python files shipped inside the package (not a paths file)."""
    datas = []
    for path in source_files():
        rel = path.relative_to(SRC)
        if rel.parts[0] != PACKAGE or path.suffix in (".py", ".pyi"):
            continue
        if path.name == "indimail-paths.conf":  # frozen: read beside the binary
            continue
        datas.append((str(path), str(rel.parent)))
    return datas


def used_by_source(pattern: str) -> list[Path]:
    rx = re.compile(pattern, re.MULTILINE)
    return [p for p in package_python_sources() if rx.search(p.read_text(errors="replace"))]


def choose_excludes() -> list[str]:
    excludes = []
    for name, pattern in EXCLUDES.items():
        users = used_by_source(pattern)
        if users:
            log(f"keeping {name}: used by {', '.join(str(u.relative_to(ROOT)) for u in users)}")
        else:
            excludes.append(name)
    if not sys.platform.startswith("win"):
        excludes += WINDOWS_ONLY
    return excludes


def choose_dropped_rthooks() -> list[str]:
    dropped = []
    for hook, pattern in DROP_RTHOOKS.items():
        users = used_by_source(pattern)
        if users:
            log(f"keeping runtime hook {hook}: needed by {users[0].relative_to(ROOT)}")
        else:
            dropped.append(hook)
    return dropped


SPEC = """\
# Generated by packaging/pyinstaller/freeze.py: edit that, not this.
a = Analysis(
    [{entry!r}],
    pathex=[{src!r}],
    binaries=[],
    datas={datas!r},
    hiddenimports={hidden!r},
    hookspath=[],
    hooksconfig={{}},
    runtime_hooks=[],
    excludes={excludes!r},
    # Modules as plain .pyc files under _internal/ rather than in a
    # zlib-compressed PYZ: ~8 ms less per start of a queue command
    # (measured 46 vs 54 ms for qmail-qstat), for ~6 MB more on disk.
    noarchive=True,
    optimize=0,
)
# Runtime hooks that would run at every start without use (see freeze.py).
a.scripts = [s for s in a.scripts if s[0] not in {dropped!r}]
pyz = PYZ(a.pure)
exe = EXE(
    pyz,
    a.scripts,
    [],
    exclude_binaries=True,
    name={name!r},
    debug=False,
    bootloader_ignore_signals=False,
    strip={strip!r},
    upx=False,
    console=True,
)
coll = COLLECT(exe, a.binaries, a.datas, strip={strip!r}, upx=False, name={name!r})
"""


def write_spec(work: Path) -> Path:
    hidden, bundled = hidden_imports()
    log(f"{len(hidden)} hidden imports ({PACKAGE}, {', '.join(bundled) or 'no extras'})")
    spec = work / f"{NAME}.spec"
    spec.write_text(
        SPEC.format(
            entry=str(ENTRY),
            src=str(SRC),
            datas=package_data(),
            hidden=hidden,
            excludes=choose_excludes(),
            dropped=choose_dropped_rthooks(),
            name=NAME,
            strip=sys.platform.startswith("linux") and shutil.which("strip") is not None,
        )
    )
    return spec


def list_commands(binary: Path) -> list[str]:
    """Ask the frozen binary itself which commands it has."""
    res = subprocess.run(
        [str(binary), "--list"], env={}, capture_output=True, text=True, timeout=120
    )
    if res.returncode != 0 or not res.stdout.strip():
        sys.exit(f"freeze: {binary} --list failed ({res.returncode}):\n{res.stderr}")
    return res.stdout.split()


def up_to_date(tree: Path, digest: str) -> bool:
    try:
        stored = (tree / HASH_FILE).read_text().strip()
    except OSError:
        return False
    return stored == digest and (tree / NAME).is_file() and (tree / "bin").is_dir()


def build(dist: Path, work: Path, digest: str) -> Path:
    target = dist / NAME
    staging = dist / f".{NAME}.new"
    old = dist / f".{NAME}.old"
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    spec = write_spec(work)
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(staging),
        "--workpath",
        str(work),
        str(spec),
    ]
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"freeze: PyInstaller failed (exit {res.returncode})")
    tree = staging / NAME
    binary = tree / NAME
    commands = list_commands(binary)
    bindir = tree / "bin"
    bindir.mkdir()
    for name in commands:
        os.symlink(f"../{NAME}", bindir / name)
    (tree / HASH_FILE).write_text(digest + "\n")
    if target.exists() or target.is_symlink():
        os.rename(target, old)
    os.rename(tree, target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    log(f"built in {time.monotonic() - started:.1f} s, {len(commands)} commands")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output directory")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "build" / "pyinstaller", help="PyInstaller work dir"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("PyInstaller") is None:
        sys.exit("freeze: PyInstaller is not installed (pip install -e '.[freeze]')")
    dist, work = args.dist.resolve(), args.work.resolve()
    dist.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    tree = dist / NAME
    # One build at a time per work directory; a waiting build then finds
    # the tree already up to date.
    with open(work / ".freeze.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = source_hash()
        if not args.force and up_to_date(tree, digest):
            os.utime(tree / HASH_FILE)  # checked now: newer than the sources
            log(f"{tree} is up to date (--force rebuilds)")
        else:
            build(dist, work, digest)
    log(f"frozen tree: {tree}")
    log(f"binary: {tree / NAME}; commands: {tree / 'bin'}/<command>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
