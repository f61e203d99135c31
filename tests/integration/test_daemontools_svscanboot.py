"""svscanboot: environment from .svscan/variables, default scan dir from
servicedir.conf, output to .svscan/log (SCANLOG) or readproctitle,
.svscan/run, .svscan/shutdown, leftover supervisors told to exit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from test_daemontools_svscan import (
    INDIMAIL,
    Tree,
    alive,
    descendants,
    make_service,
    status,
    sv_env,
    svc_run,
    wait_for,
)


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)


def _variables(scandir: Path, **values: str) -> None:
    v = scandir / ".svscan" / "variables"
    v.mkdir(parents=True, exist_ok=True)
    base = {
        "DISABLE_RUN": "1",
        "AUTOSCAN": "1",
        "SCANINTERVAL": "1",
        "TERMINATE_SESSION": "1",
        "KILLWAIT": "1",
    }
    base.update(values)
    for k, val in base.items():
        (v / k).write_text(val + "\n")


def _boot(tree: Tree, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(INDIMAIL), "svscanboot", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tree.procs.append(proc)
    return proc


def test_svscanboot_with_scanlog_initcmd_and_shutdown(tmp_path: Path):
    scandir = tmp_path / "service"
    scandir.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    _variables(scandir, SCANLOG="1", MARKER="from-variables")
    _script(scandir / ".svscan" / "run", f"echo initcmd > {marks}/run")
    _script(scandir / ".svscan" / "shutdown", f"echo shutdown > {marks}/shutdown")
    (scandir / ".svscan" / "log").mkdir()
    _script(scandir / ".svscan" / "log" / "run", "exec multilog t ./main")
    d = make_service(
        scandir,
        "envcheck",
        f"env > {marks}/env.tmp\nmv {marks}/env.tmp {marks}/env\nexec sleep 1007.1",
    )
    (scandir / "norun").mkdir()  # svscan warns about it at every scan
    tree = Tree(scandir)
    env = sv_env(OUTER="leaked")
    proc = _boot(tree, [str(scandir)], env)
    try:
        # written whole and renamed: existence means the content is complete
        assert wait_for(lambda: (marks / "env").exists() and status(d)[0])
        lines = (marks / "env").read_text().splitlines()
        assert "MARKER=from-variables" in lines
        assert not any(ln.startswith("OUTER=") for ln in lines)  # env only from variables
        assert "SCANDIR=" + str(scandir) in lines
        assert wait_for(lambda: (marks / "run").exists())  # .svscan/run (INITCMD)
        # svscan's own messages go to the .svscan/log service
        current = scandir / ".svscan" / "log" / "main" / "current"
        assert wait_for(
            lambda: current.exists() and b"unable to start norun" in current.read_bytes()
        )
        assert status(scandir / ".svscan" / "log")[0]
        pid = status(d)[1]
        tree.remember()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert wait_for(lambda: (marks / "shutdown").exists())  # .svscan/shutdown on TERM
        assert wait_for(lambda: not alive(pid))  # TERMINATE_SESSION from variables
    finally:
        tree.stop()


def test_svscanboot_default_dir_readproctitle_and_leftovers(tmp_path: Path):
    scandir = tmp_path / "sv"
    scandir.mkdir()
    control = tmp_path / "control"
    control.mkdir()
    (control / "servicedir.conf").write_text(f"{scandir}\n")
    _variables(scandir)
    d = make_service(scandir, "old", "exec sleep 1007.2")
    (scandir / "norun").mkdir()
    tree = Tree(scandir)
    # a standalone supervise left by an earlier boot
    leftover = subprocess.Popen(
        [str(INDIMAIL), "supervise", "old"],
        cwd=scandir,
        env=sv_env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tree.procs.append(leftover)
    try:
        first = wait_for(lambda: status(d)[1])
        assert first
        proc = _boot(tree, [], sv_env(CONTROLDIR=str(control)))
        # the leftover supervisor goes down and exits; svscan takes over
        assert leftover.wait(timeout=10) == 0
        assert not alive(first)
        assert wait_for(lambda: status(d)[1] not in (0, first))
        assert svc_run("svok", str(d)).returncode == 0

        # svscan's errors reach a readproctitle child
        def title() -> str:
            for pid in descendants(proc.pid) - {proc.pid}:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if "run file" in comm:
                    return comm
            return ""

        assert wait_for(title)
        # a second svscanboot on the same dir is refused, nothing touched
        before = status(d)[1]
        res = subprocess.run(
            [str(INDIMAIL), "svscanboot", str(scandir)],
            env=sv_env(),
            capture_output=True,
            timeout=30,
        )
        assert res.returncode == 111 and b"already running" in res.stderr
        time.sleep(0.5)
        assert status(d)[1] == before and alive(before)
    finally:
        tree.stop()
