"""svscan [-v] [-s] [-n count] [scandir]: supervise every service of a dir.

One process does the work of svscan *and* of every ``supervise``: each
service (and each ``log/`` service) gets a :class:`Service` that keeps its
own ``supervise/`` directory, lock, fifos and status file, so ``svc``,
``svstat`` and ``svok`` (ours, the fork's, Debian's) see one supervisor per
service as usual.  A logger whose ``run`` is the standard ``exec
[setuidgid U] multilog ...`` runs multilog in a forked child of this warm
process instead of a new interpreter.  See docs/design.md.

Killed (even by SIGKILL), svscan leaves the services and loggers running; a
new svscan takes the lock of each ``supervise/``, finds in ``status`` the
pid that still runs (checked against its start time), adopts it instead of
starting a second copy and reconnects the log pipe through /proc.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import signal
import stat
import struct
import sys
import time
from pathlib import Path

from indimail.core.errors import Fatal, UsageError
from indimail.core.proctitle import set_proc_name
from indimail.daemontools import svdir
from indimail.daemontools.loop import Loop
from indimail.daemontools.service import Busy, Service
from indimail.daemontools.supervise import logger_runner

SVSCANLOG = ".svscan"
PIDFILE = ".svscan.pid"


class Entry:
    """A service directory seen by a scan."""

    def __init__(self, name: str, path: Path, key: tuple[int, int]) -> None:
        self.name = name
        self.path = path
        self.key = key
        self.has_log = False
        self.pipe: tuple[int, int] | None = None
        self.main: Service | None = None
        self.log: Service | None = None
        self.wantup: int = -1
        self.active = True


class Scanner:
    def __init__(self, sdir: Path, maxsvc: int, env: dict[str, str]) -> None:
        self.sdir = sdir
        self.maxsvc = maxsvc
        self.env = env
        self.verbose = bool(env.get("VERBOSE"))
        self.silent = bool(env.get("SILENT"))
        self.entries: dict[tuple[int, int], Entry] = {}
        self.loop = Loop()
        self.root = svdir.run_root(env)
        self.pid = os.getpid()
        self.scan_timer: int | None = None
        self.shutting_down = False
        self.scanlog_started = False

    # --- messages -------------------------------------------------------
    def warn(self, text: str) -> None:
        if not self.silent:
            _say(f"svscan: warning: {text}\n")

    def info(self, text: str) -> None:
        if self.verbose:
            _say(f"svscan: info: {text}\n")

    # --- scanning ------------------------------------------------------
    def scan(self) -> None:
        if self.shutting_down:
            return
        for e in self.entries.values():
            e.active = False
        try:
            names = sorted(os.listdir(self.sdir))
        except OSError as exc:
            self.warn(f"unable to read directory: {exc.strerror}")
            return
        for name in names:
            if name.startswith(".") and name != SVSCANLOG:
                continue
            path = self.sdir / name
            try:
                st = os.stat(path)
            except OSError as exc:
                self.warn(f"unable to stat {name}: {exc.strerror}")
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            self.start(name, path, (st.st_dev, st.st_ino))
        for key, e in list(self.entries.items()):
            if not e.active and e.main is None and e.log is None:
                if e.pipe:
                    for fd in set(e.pipe):
                        with contextlib.suppress(OSError):
                            os.close(fd)
                del self.entries[key]

    def start(self, name: str, path: Path, key: tuple[int, int]) -> None:
        e = self.entries.get(key)
        if e is None:
            if len(self.entries) >= self.maxsvc:
                self.warn(f"unable to start {name}: running too many services")
                return
            e = Entry(name, path, key)
            e.has_log = os.path.isdir(path / "log")
            self.entries[key] = e
        e.active = True
        e.name = name
        is_scanlog = name == SVSCANLOG
        main_new = log_new = None
        if not is_scanlog and e.main is None:
            main_new = self.make_service(e, log=False)
        if e.has_log and e.log is None:
            log_new = self.make_service(e, log=True)
        if main_new or log_new:
            self.connect(e, main_new, log_new)
        elif not is_scanlog and e.main is not None:
            self.watch_down(e)

    def make_service(self, e: Entry, log: bool) -> Service | None:
        env = dict(self.env)
        env["SCANDIR"] = str(self.sdir)
        if log:
            svd = e.path / "log"
            env["SV_PWD"] = e.name
            state = svdir.state_dir(svd, "log", e.name, self.root)
            svars = svd / ".svars"
        else:
            svd = e.path
            env["MAIN_SV"] = e.name
            env["SV_PWD"] = e.name
            state = svdir.state_dir(svd, e.name, None, self.root)
            svars = svd / ".svars"
        if os.access(svars, os.X_OK):
            try:
                from indimail.core.envdir import envdir_operations

                for k, v in envdir_operations(svars):
                    if v is None:
                        env.pop(k, None)
                    else:
                        env[k] = v
            except Fatal as exc:
                self.warn(exc.message)
        hooks = logger_runner(svd / "run", env) if log else None
        ident = f"{e.name}/log" if log else e.name
        if not os.path.exists(svd / "run"):
            self.warn(f"unable to start {ident}: no run file")
            return None
        service = Service(
            self.loop,
            svd,
            state,
            "log" if log else e.name,
            ident,
            env,
            runner=hooks[0] if hooks else None,
            child_setup=hooks[1] if hooks else None,
            on_exit=self.service_ended,
        )
        try:
            if self.root is not None:
                os.makedirs(state, mode=0o755, exist_ok=True)
            service.open()
        except Busy as exc:
            self.warn(f"{ident}: supervise already running: {exc}")
            return None
        except OSError as exc:
            self.warn(f"unable to start supervise {ident}: {exc.strerror or exc}")
            return None
        service.entry = e  # type: ignore[attr-defined]
        if log:
            e.log = service
        else:
            e.main = service
            e.wantup = 1 if service.wantup else 0
        return service

    def connect(self, e: Entry, main: Service | None, log: Service | None) -> None:
        """Give new services their pipe ends and start (or adopt) them."""
        if e.has_log and e.pipe is None:
            e.pipe = self.recover_pipe(main, log)
        if e.pipe is not None:
            if main is not None:
                main.stdout = e.pipe[1]
            if log is not None:
                log.stdin = e.pipe[0]
        if log is not None:
            log.begin(adopt=True)
            if e.name == SVSCANLOG and self.env.get("SCANLOG") and not self.scanlog_started:
                self.scanlog_started = True
                if e.pipe is not None:
                    os.dup2(e.pipe[1], 1)
                    os.dup2(e.pipe[1], 2)
        if main is not None:
            main.begin(adopt=True)

    def recover_pipe(self, main: Service | None, log: Service | None) -> tuple[int, int]:
        """The pipe between a service and its logger: reopened through
        /proc when either side survived an earlier svscan, else new."""
        candidates = []
        if log is not None and log.previous_pid():
            candidates.append((log.previous_pid(), 0))
        if main is not None and main.previous_pid():
            candidates.append((main.previous_pid(), 1))
        for pid, fdno in candidates:
            link = f"/proc/{pid}/fd/{fdno}"
            try:
                if stat.S_ISFIFO(os.stat(link).st_mode):
                    fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
                    self.info(f"reconnected log pipe through {link}")
                    return fd, fd
            except OSError:
                continue
        return os.pipe()

    def watch_down(self, e: Entry) -> None:
        """A ``down`` file appearing/vanishing stops/starts the service."""
        svc = e.main
        if svc is None:
            return
        down = os.path.lexists(e.path / "down")
        if e.wantup == 1 and down:
            self.info(f"Stopping service {e.name} which was up")
            svc.command("d")
            e.wantup = 0
        elif e.wantup == 0 and not down:
            self.info(f"Starting service {e.name} which was down")
            svc.command("u")
            e.wantup = 1

    def service_ended(self, service: Service) -> None:
        e = getattr(service, "entry", None)
        if e is None:
            return
        if e.main is service:
            e.main = None
        if e.log is service:
            e.log = None
        if self.env.get("SCANNOW") and not self.shutting_down:
            self.loop.call_later(0, self.scan)

    # --- signals -------------------------------------------------------
    def services(self) -> list[Service]:
        found = []
        for e in self.entries.values():
            found += [s for s in (e.main, e.log) if s is not None]
        return found

    def terminate(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        # nothing is started again from here on: a TERM sent to the whole
        # process group also ends the services, and their exits (reaped
        # right after this) must not restart them behind our back, as each
        # supervise of daemontools would not once it got its own TERM
        for svc in self.services():
            svc.flagexit = True
        _say(f"svscan: info: pid: {self.pid}: shutdown in progress...\n")
        unlink_pidfile(self.pidfile, self.pid)
        script = self.sdir / SVSCANLOG / "shutdown"
        session = bool(self.env.get("TERMINATE_SESSION")) or self.pid == 1
        if os.access(script, os.X_OK):
            pid = os.fork()
            if pid == 0:
                try:
                    os.execv("/bin/sh", ["/bin/sh", "-c", str(script)])
                finally:
                    os._exit(111)
            self.loop.watch_child(pid, lambda _p, _w: None)
        if session:
            w1, w2 = killwaits(self.env)
            self.kill_all(mains=True)
            self.wait_down(w1, mains=True)
            self.kill_all(mains=False)
            self.wait_down(w2, mains=False)
            for s in self.services():
                if s.childpid:
                    s.kill([signal.SIGKILL], True)
        _say(f"svscan: info: pid: {self.pid}: exiting...\n")
        # a forked svscan logger gets EOF once our copy of its pipe is gone
        scanlog = next((e for e in self.entries.values() if e.name == SVSCANLOG), None)
        if scanlog and scanlog.log and scanlog.log.childpid:
            with contextlib.suppress(OSError):
                os.dup2(0, 1)
                os.dup2(0, 2)
            with contextlib.suppress(OSError):
                os.kill(scanlog.log.childpid, signal.SIGTERM)
        self.loop.stopped = True

    def kill_all(self, mains: bool) -> None:
        for e in self.entries.values():
            svc = e.main if mains else e.log
            if svc is None or not svc.childpid:
                continue
            svc.flagexit = True
            svc.wantxx, svc.wantup = True, False
            self.info(f"terminating {'svc' if mains else 'log'} pid {svc.childpid}")
            if not mains and e.pipe:
                for fd in set(e.pipe):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                e.pipe = None
            svc.kill([signal.SIGTERM, signal.SIGCONT])

    def wait_down(self, seconds: float, mains: bool) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            busy = [
                s
                for e in self.entries.values()
                for s in ([e.main] if mains else [e.log])
                if s is not None and s.childpid
            ]
            if not busy:
                return
            self.loop.run_once(max_wait=0.1)

    def toggle_verbose(self) -> None:
        self.verbose = not self.verbose

    def toggle_silent(self) -> None:
        self.silent = not self.silent

    # --- main loop -----------------------------------------------------
    def run(self, interval: float, autoscan: bool) -> None:
        self.loop.on_signal(signal.SIGHUP, self.scan)
        self.loop.on_signal(signal.SIGTERM, self.terminate)
        self.loop.on_signal(signal.SIGUSR1, self.toggle_verbose)
        self.loop.on_signal(signal.SIGUSR2, self.toggle_silent)
        gc.collect()
        gc.freeze()  # keep forked loggers' pages shared
        self.scan()

        def periodic() -> None:
            self.scan()
            self.loop.call_later(interval, periodic)

        if autoscan:
            self.loop.call_later(interval, periodic)
        self.loop.run()


def killwaits(env: dict[str, str]) -> tuple[float, float]:
    def num(key: str) -> float | None:
        try:
            return float(env[key])
        except (KeyError, ValueError):
            return None

    total = num("KILLWAIT")
    if total is not None:
        return total / 2, total / 2
    w1 = num("KILLWAIT1")
    w2 = num("KILLWAIT2")
    return (w1 if w1 is not None else 2.0), (w2 if w2 is not None else 2.0)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _comm(pid: int) -> str:
    """Command name of a live ``pid`` ("" if gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        if data[data.rindex(b")") + 2 :][:1] in (b"Z", b"X"):
            return ""
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return ""


def pidfile_path(sdir: Path, env: dict[str, str], create: bool = False) -> Path:
    """``RUNDIR/svscan/.svscan.pid`` when the run directory exists (made
    with ``create``) unless DISABLE_RUN, else ``sdir/.svscan.pid``."""
    if env.get("DISABLE_RUN"):
        return sdir / PIDFILE
    from indimail.core import paths

    rundir = paths.load(env).rundir
    if not rundir.is_dir():
        return sdir / PIDFILE
    if create:
        try:
            os.makedirs(rundir / "svscan", mode=0o755, exist_ok=True)
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to mkdir {rundir}/svscan: {exc.strerror}") from None
    return rundir / "svscan" / PIDFILE


def running_svscan(pidfile: Path) -> int:
    """Pid of a live svscan holding ``pidfile``, else 0."""
    try:
        data = pidfile.read_bytes()
        pid = struct.unpack("=i", data[:4])[0] if len(data) >= 4 else 0
    except OSError:
        return 0
    if pid <= 0 or pid == os.getpid():
        return 0
    return pid if _comm(pid) == "svscan" else 0


def get_lock(pidfile: Path, mypid: int) -> None:
    """Create the pid file (O_EXCL); a stale one is removed; a live svscan
    holding it is an error."""
    while True:
        try:
            fd = os.open(pidfile, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                data = pidfile.read_bytes()
                pid = struct.unpack("=i", data[:4])[0] if len(data) >= 4 else -1
            except OSError as exc:
                raise Fatal(111, f"unable to read {pidfile}: {exc.strerror}") from None
            if pid == mypid:
                return
            alive = pid > 0
            if alive:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if alive and _comm(pid) == "svscan":
                raise Fatal(
                    111, f"fatal: [svscan] already running (pid {pid}, {pidfile})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            continue
        except OSError as exc:
            raise Fatal(
                111, f"fatal: unable to obtain lock for {pidfile}: {exc.strerror}"
            ) from None
        os.write(fd, struct.pack("=i", mypid) + b"\n" + str(mypid).encode() + b"\n")
        os.close(fd)
        return


def unlink_pidfile(pidfile: Path, mypid: int) -> None:
    try:
        data = pidfile.read_bytes()
        if len(data) >= 4 and struct.unpack("=i", data[:4])[0] == mypid:
            pidfile.unlink()
    except OSError:
        pass


def main(argv: list[str]) -> int:
    args = argv[1:]
    maxsvc = 1000
    env = dict(os.environ)
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt == "--":
            break
        letters = opt[1:]
        while letters:
            ch, letters = letters[0], letters[1:]
            if ch == "v":
                env["VERBOSE"] = "1"
            elif ch == "s":
                env["SILENT"] = "1"
            elif ch == "n":
                value = letters or (args.pop(0) if args else "")
                letters = ""
                try:
                    maxsvc = int(value)
                except ValueError:
                    raise UsageError("usage: svscan [-sv] [-n count] [directory]") from None
            else:
                raise UsageError("usage: svscan [-sv] [-n count] [directory]")
    if args:
        try:
            os.chdir(args[0])
        except OSError as exc:
            raise Fatal(111, f"fatal: unable to chdir to {args[0]}: {exc.strerror}") from None
    sdir = Path(os.getcwd())
    mypid = os.getpid()
    set_proc_name("svscan")
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 8 * maxsvc + 64))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    pidfile = pidfile_path(sdir, env, create=True)
    get_lock(pidfile, mypid)
    env["SCANDIR"] = str(sdir)
    env["PWD"] = str(sdir)
    env["PPID"] = str(mypid)
    if env.get("SETSID"):
        with contextlib.suppress(OSError):
            os.setsid()
    scanner = Scanner(sdir, maxsvc, env)
    scanner.pidfile = pidfile  # type: ignore[attr-defined]
    cmd = env.get("INITCMD")
    init = cmd or (
        str(sdir / SVSCANLOG / "run") if os.access(sdir / SVSCANLOG / "run", os.X_OK) else ""
    )
    if init:
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/sh", ["/bin/sh", "-c", init])
            finally:
                os._exit(111)
        if env.get("WAIT_INITCMD"):
            os.waitpid(pid, 0)
        else:
            scanner.loop.watch_child(pid, lambda _p, _w: None)
    try:
        interval = float(env.get("SCANINTERVAL") or 60) or 60.0
    except ValueError:
        interval = 60.0
    try:
        scanner.run(interval, bool(env.get("AUTOSCAN")))
    finally:
        unlink_pidfile(pidfile, mypid)
        sys.stdout.flush()
    return 0
