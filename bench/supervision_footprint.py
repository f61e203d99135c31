#!/usr/bin/env python3
"""Memory footprint of the supervision tree: ours against Debian's daemontools.

Starts N trivial services (``exec sleep 1000``), each with a logger
(``exec multilog t ./main``), once under our ``svscan`` and once under
Debian's ``/usr/bin/svscan`` in another temp dir, waits until every service
is up, then sums the proportional set size (``Pss`` of
``/proc/PID/smaps_rollup``) of the supervision processes: svscan, the
supervise processes and the loggers, every descendant of svscan except the
services themselves (identified by the pid in their ``supervise/status``).
Prints a table and stops everything it started (by pid).

    python bench/supervision_footprint.py [--services 15] [--settle 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_INDIMAIL = Path(sys.executable).parent / "indimail"


def make_tree(top: Path, count: int, multilog: str) -> Path:
    scandir = top / "service"
    for i in range(count):
        svc = scandir / f"svc{i:02d}"
        (svc / "log").mkdir(parents=True)
        (svc / "run").write_text("#!/bin/sh\nexec 2>&1\nexec sleep 1000\n")
        (svc / "log" / "run").write_text(f"#!/bin/sh\nexec {multilog} t ./main\n")
        os.chmod(svc / "run", 0o755)
        os.chmod(svc / "log" / "run", 0o755)
    return scandir


def status_pid(path: Path) -> int:
    """Pid of the running service in a status file (18, 21 or 25 bytes)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    if len(data) < 18:
        return 0
    pid = struct.unpack_from("<I", data, 12)[0]
    if len(data) >= 21 and not data[20]:
        return 0
    return pid


def all_up(scandir: Path, count: int) -> tuple[bool, set[int]]:
    services = set()
    for i in range(count):
        svc = scandir / f"svc{i:02d}"
        main = status_pid(svc / "supervise" / "status")
        log = status_pid(svc / "log" / "supervise" / "status")
        if not main or not log:
            return False, services
        services.add(main)
    return True, services


def proc_stats() -> dict[int, list[bytes]]:
    """Every process's ``/proc/PID/stat`` fields after the command name
    (state first, then ppid, ...), read once."""
    stats: dict[int, list[bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        stats[int(entry)] = data[data.rindex(b")") + 2 :].split()
    return stats


def children_map(stats: dict[int, list[bytes]] | None = None) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid, fields in (proc_stats() if stats is None else stats).items():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def descendants(pid: int, stats: dict[int, list[bytes]] | None = None) -> list[int]:
    tree = children_map(stats)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += tree.get(p, [])
    return found


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def measure(
    label: str, cmd: list[str], env: dict[str, str], scandir: Path, count: int, settle: float
) -> dict:
    proc = subprocess.Popen(
        [*cmd, str(scandir)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids: list[int] = [proc.pid]
    try:
        deadline = time.monotonic() + 30
        services: set[int] = set()
        ok = False
        while time.monotonic() < deadline:
            ok, services = all_up(scandir, count)
            if ok:
                break
            time.sleep(0.2)
        if not ok:
            raise RuntimeError(f"{label}: services did not come up within 30 s")
        time.sleep(settle)
        ok, services = all_up(scandir, count)
        pids = descendants(proc.pid)
        tree = [p for p in pids if p not in services]
        per = {p: pss_kb(p) for p in tree}
        kinds: dict[str, int] = {}
        for p in tree:
            kinds[comm(p)] = kinds.get(comm(p), 0) + 1
        return {
            "label": label,
            "processes": len(tree),
            "kinds": kinds,
            "pss_kb": sum(per.values()),
            "services": len(services),
        }
    finally:
        stop(proc, pids)


def stop(proc: subprocess.Popen, pids: list[int]) -> None:
    """SIGTERM then SIGKILL every process this run started, svscan first."""
    everything = set(pids) | set(descendants(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in [proc.pid, *sorted(everything - {proc.pid})]:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        time.sleep(0.3)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for p in everything:  # reap nothing else; just make sure they are gone
        for _ in range(20):
            try:
                os.kill(p, 0)
            except OSError:
                break
            time.sleep(0.05)


def run(count: int, settle: float, indimail: Path, want_debian: bool = True) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="svfoot-") as tmp:
        top = Path(tmp)
        ours = make_tree(top / "ours", count, "multilog")
        env = {
            "PATH": "/usr/bin:/bin",
            "DISABLE_RUN": "1",
            "TERMINATE_SESSION": "1",
            "KILLWAIT": "1",
            "HOME": str(top),
        }
        results.append(measure("ours", [str(indimail), "svscan"], env, ours, count, settle))
        if (
            want_debian
            and os.path.exists("/usr/bin/svscan")
            and os.path.exists("/usr/bin/supervise")
        ):
            theirs = make_tree(top / "debian", count, "/usr/bin/multilog")
            denv = {"PATH": "/usr/bin:/bin", "HOME": str(top)}
            results.append(measure("daemontools", ["/usr/bin/svscan"], denv, theirs, count, settle))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=15)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--indimail", type=Path, default=DEFAULT_INDIMAIL)
    ap.add_argument("--no-debian", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.indimail.exists():
        found = shutil.which("indimail")
        if not found:
            print("indimail binary not found (--indimail)", file=sys.stderr)
            return 111
        args.indimail = Path(found)
    results = run(args.services, args.settle, args.indimail, not args.no_debian)
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"supervision tree: {args.services} services + {args.services} loggers (services excluded)"
    )
    print(f"{'tree':<12} {'procs':>5} {'Pss MB':>8}  processes")
    for r in results:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(r["kinds"].items()))
        print(f"{r['label']:<12} {r['processes']:>5} {r['pss_kb'] / 1024:>8.1f}  {kinds}")
    if len(results) == 2 and results[1]["pss_kb"]:
        print(f"ratio ours/daemontools: {results[0]['pss_kb'] / results[1]['pss_kb']:.2f}")
    else:
        print("daemontools not installed (apt-get install daemontools): no comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
