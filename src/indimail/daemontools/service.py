"""One supervised service: the state machine of ``supervise``.

A :class:`Service` owns a service's ``supervise/`` directory (``lock``,
the ``control``, ``ok``, ``up`` and ``dn`` fifos, ``status``) and its
``run`` process.  It never blocks: it is driven by a :class:`Loop`, so the
standalone ``supervise`` command runs one of them and ``svscan`` runs every
service of a scan directory in a single process.

Behaviour follows the fork's supervise: ``./init`` before the first start,
``./run dir how``, ``variables/`` applied as by envdir, a ``down`` file,
``wait``, ``alert`` and ``shutdown`` hooks, the ``svc`` letters, at most one
start per second (the restart back-off), sticky bit on ``run`` or SETPGID
for a process group and the monitoring of daemons that double-fork.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from indimail.core import tai64n
from indimail.daemontools import status as statusfile
from indimail.daemontools.loop import Loop
from indimail.daemontools.svdir import find_supervise

BACKOFF = 1.0  # seconds between two starts of a service
INIT_RETRY = 60.0
CONTROL_LETTERS = "udropchaitqUk12Gx"

SIGNALS = {
    "a": signal.SIGALRM,
    "h": signal.SIGHUP,
    "k": signal.SIGKILL,
    "t": signal.SIGTERM,
    "i": signal.SIGINT,
    "q": signal.SIGQUIT,
    "U": signal.SIGUSR1,
    "1": signal.SIGUSR1,
    "2": signal.SIGUSR2,
}

# A runner replaces ``exec ./run`` by code run in the forked child (the
# forked multilog of a standard log/run); it returns the exit code.
Runner = Callable[[], int]


class Busy(Exception):
    """Another supervisor holds ``supervise/lock``."""


def _mkfifo(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.mkfifo(path, 0o600)
        return
    if not stat.S_ISFIFO(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} is not a named pipe")


def _open_nb(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


def proc_start_time(pid: int) -> float | None:
    """Unix time at which ``pid`` started, from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        ticks = int(data[data.rindex(b")") + 2 :].split()[19])
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return int(fields[1]), int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def read_variables(directory: Path, environ: dict[str, str]) -> dict[str, str]:
    """Environment after ``envdir [-c] variables``: cleared first when the
    directory lacks the other-execute bit, as the original's run types."""
    from indimail.core.envdir import envdir_operations

    st = os.lstat(directory)
    env = dict(environ) if st.st_mode & stat.S_IXOTH else {}
    for name, value in envdir_operations(directory):
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class Service:
    """Supervision of one service directory."""

    def __init__(
        self,
        loop: Loop,
        svdir: Path,
        statedir: Path,
        name: str,
        ident: str | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        runner: Runner | None = None,
        on_exit: Callable[[Service], None] | None = None,
        child_setup: Callable[[], None] | None = None,
        spid: int | None = None,
    ) -> None:
        self.loop = loop
        self.svdir = svdir
        self.statedir = statedir
        self.sup = statedir / "supervise"
        self.name = name
        self.ident = ident or name
        self.env = dict(os.environ if env is None else env)
        self.stdin = stdin
        self.stdout = stdout
        self.runner = runner
        self.on_exit = on_exit
        self.child_setup = child_setup
        self.spid = spid or os.getpid()
        self.verbose = bool(self.env.get("VERBOSE"))
        self.silent = bool(self.env.get("SILENT"))
        self.fds: dict[str, int] = {}
        self.childpid = 0
        self.adopted = False
        self.paused = False
        self.wantxx = True
        self.wantup = True
        self.flagexit = False
        self.restart_pending = False
        self.group_next = False  # 'G' seen: next signal goes to the group
        self.grandchildren: set[int] = set()
        self.pgid = 0  # process group of the service (sticky run / SETPGID)
        self.sticky = False
        self.setpgrp = False
        self.up = False
        self.wait = 0
        self.stamp = tai64n.now_pack()
        self.last_start = -1e9
        self.start_timer: int | None = None
        self.pending_how: str | None = None
        self.busy_hook = False  # init/shutdown/alert/wait in progress
        self.closed = False
        self.previous: bytes | None = None

    # --- messages ------------------------------------------------------
    def warn(self, text: str) -> None:
        if not self.silent:
            _say(f"{self.ident}: supervise: warning: {text}\n")

    def info(self, text: str) -> None:
        if self.verbose:
            _say(f"{self.ident}: supervise: info: {text}\n")

    # --- setting up ----------------------------------------------------
    def open(self) -> None:
        """Create/lock ``supervise/`` and open its fifos; Busy if locked."""
        self.wantup = not os.path.lexists(self.svdir / "down")
        os.makedirs(self.sup, mode=0o700, exist_ok=True)
        lock = os.open(
            self.sup / "lock", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise Busy(
                f"unable to acquire {self.ident}/supervise/lock: temporary failure"
            ) from None
        self.fds["lock"] = lock
        try:
            for fifo in ("control", "ok", "up", "dn"):
                _mkfifo(self.sup / fifo)
            self.fds["control"] = _open_nb(self.sup / "control", os.O_RDONLY)
            self.fds["controlw"] = _open_nb(self.sup / "control", os.O_WRONLY)
            try:
                with open(self.sup / "status", "rb") as fh:
                    self.previous = fh.read(64)
            except OSError:
                self.previous = None
            self.fds["status"] = os.open(
                self.sup / "status", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
            self.announce()
            self.fds["ok"] = _open_nb(self.sup / "ok", os.O_RDONLY)
            if not self.wantup:
                self.fds["dn"] = _open_nb(self.sup / "dn", os.O_RDONLY)
        except BaseException:
            self.close()
            raise
        self.loop.add_reader(self.fds["control"], self.on_control)

    def close(self) -> None:
        """Release the lock and the fifos (the supervisor is gone)."""
        if self.closed:
            return
        self.closed = True
        if "control" in self.fds:
            self.loop.remove_reader(self.fds["control"])
        self.loop.cancel(self.start_timer)
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def previous_pid(self) -> int:
        """Pid that the status file left by a dead supervisor shows running,
        if that process still lives and started when the file says."""
        if not self.previous:
            return 0
        try:
            st = statusfile.decode(self.previous)
        except ValueError:
            return 0
        if not st.up or st.pid <= 1 or st.pid == os.getpid():
            return 0
        started = proc_start_time(st.pid)
        if started is None or abs(started - (st.seconds + st.nanos / 1e9)) > 3:
            return 0
        return st.pid

    def begin(self, adopt: bool = False) -> None:
        """Start as supervise does (init, then run unless down); with
        ``adopt``, take over the process an earlier supervisor left."""
        if adopt:
            pid = self.previous_pid()
            if pid and self.loop.watch_pid(pid, self._on_child_exit):
                st = statusfile.decode(self.previous or b"")
                self.childpid = pid
                with contextlib.suppress(OSError):
                    self.pgid = pid if os.getpgid(pid) == pid else 0
                self.adopted = True
                self.paused = st.paused
                self.wantxx = st.want != ""
                self.wantup = st.want != "d"
                self.stamp = self.previous[:12] if self.previous else self.stamp
                self.up = True
                self.last_start = time.monotonic()
                self.announce()
                self._open_fifo("up")
                self.info(f"adopted running pid {pid}")
                return
        init = self.svdir / "init"
        if os.access(init, os.X_OK):
            self._run_init()
            return
        if not self.wantxx or self.wantup:
            self.trystart("auto startup")

    def _run_init(self) -> None:
        self.busy_hook = True

        def done(_pid: int, wstat: int | None) -> None:
            self.busy_hook = False
            if wstat is not None and os.WIFEXITED(wstat) and os.WEXITSTATUS(wstat) == 0:
                if not self.flagexit and (not self.wantxx or self.wantup):
                    self.trystart("auto startup")
                elif self.flagexit:
                    self._finish()
                return
            self.warn(f"initialization failed for {self.name}, sleeping 60 seconds")
            self.busy_hook = True

            def retry() -> None:
                self.busy_hook = False
                if self.flagexit:
                    self._finish()
                else:
                    self._run_init()

            self.loop.call_later(INIT_RETRY, retry)

        self._spawn_hook(str(self.svdir / "init"), [], done)

    # --- status --------------------------------------------------------
    def pidchange(self, pid: int, up: bool) -> None:
        self.stamp = tai64n.now_pack()
        self.up = up

    def announce(self) -> None:
        fd = self.fds.get("status")
        if fd is None:
            return
        want = ("u" if self.wantup else "d") if self.wantxx else ""
        data = statusfile.encode(
            self.stamp,
            self.childpid if self.up else 0,
            bool(self.childpid) and self.paused,
            want,
            self.wait,
            self.up,
            self.spid,
        )
        try:
            os.pwrite(fd, data, 0)
        except OSError as exc:
            self.warn(f"unable to write {self.ident}/supervise/status: {exc.strerror}")

    def _open_fifo(self, which: str) -> None:
        other = "dn" if which == "up" else "up"
        if which not in self.fds:
            try:
                self.fds[which] = _open_nb(self.sup / which, os.O_RDONLY)
            except OSError as exc:
                self.warn(f"unable to read {self.ident}/supervise/{which}: {exc.strerror}")
        fd = self.fds.pop(other, None)
        if fd is not None:
            os.close(fd)

    # --- starting ------------------------------------------------------
    def trystart(self, how: str) -> None:
        if self.childpid or self.flagexit or self.busy_hook:
            return
        self.pending_how = how
        wait = time.monotonic() - self.last_start
        if wait < BACKOFF:
            if self.start_timer is None:
                self.start_timer = self.loop.call_later(BACKOFF - wait, self._timed_start)
            return
        self._start_now()

    def _timed_start(self) -> None:
        self.start_timer = None
        if self.childpid or self.flagexit or self.pending_how is None:
            return
        if not self.wantxx or self.wantup or self.pending_how in ("one-time startup",):
            self._start_now()

    def _start_now(self) -> None:
        how = self.pending_how or "auto startup"
        self.pending_how = None
        if self._wait_file(how):
            return
        self.spawn(how)

    def _wait_file(self, how: str) -> bool:
        """Handle ``wait`` (line 1 seconds, line 2 service): True if the
        start is deferred until that service is up plus the interval."""
        try:
            with open(self.svdir / "wait", "rb") as fh:
                lines = fh.read(512).split(b"\n")
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.warn(f"unable to open wait: {exc.strerror}")
            return False
        if len(lines) < 2 or not lines[0] or not lines[1].strip():
            return False
        try:
            seconds = int(lines[0].split()[0])
        except (ValueError, IndexError):
            seconds = 60
        if seconds > 32767 or seconds < 0:
            seconds = 60
        other = os.fsdecode(lines[1].strip())
        target = Path(other) if other.startswith("/") else self.svdir.parent / other
        if not target.exists():
            return False  # no such service: do not wait
        sup = find_supervise(str(target), self.env)[0]
        upfifo = sup / self.env.get("UPFIFO", "up")
        self.busy_hook = True
        self.pidchange(0, False)
        self.wait = -2
        self.announce()

        def poll() -> None:
            if self.flagexit:
                self.busy_hook = False
                self.wait = 0
                self._finish()
                return
            try:
                fd = os.open(upfifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self.warn(f"supervise not running for dir {other}")
                self.loop.call_later(1.0, poll)
                return
            os.close(fd)
            try:
                with open(sup / "status", "rb") as fh:
                    st = statusfile.decode(fh.read(64))
                ready = st.up and st.pid and not st.paused and st.want != "d"
            except (OSError, ValueError):
                ready = False
            if not ready:
                self.loop.call_later(1.0, poll)
                return
            self.pidchange(0, False)
            self.wait = seconds
            self.announce()
            self.info(f"wait {seconds} seconds for service {other}")

            def go() -> None:
                self.busy_hook = False
                self.wait = 0
                self.announce()
                if self.flagexit:
                    self._finish()
                elif not self.wantxx or self.wantup:
                    self.spawn(how)

            self.loop.call_later(seconds, go)

        poll()
        return True

    def _child_env(self) -> dict[str, str]:
        env = dict(self.env)
        env["PPID"] = str(self.spid)
        variables = self.svdir / "variables"
        if os.path.isdir(variables) and not os.path.islink(variables):
            try:
                env = read_variables(variables, env)
            except Exception as exc:  # a broken envdir: run fails as envdir would
                self.warn(f"unable to read {variables}: {exc}")
        return env

    def spawn(self, how: str) -> None:
        try:
            sticky = bool(os.stat(self.svdir / "run").st_mode & stat.S_ISVTX)
        except OSError as exc:
            self.warn(f"unable to stat {self.ident}/run: {exc.strerror}")
            sticky = False
        setpgrp = sticky or bool(self.env.get("SETPGID"))
        if sticky:
            become_subreaper()
        env = self._child_env()
        self.sticky = sticky
        self.setpgrp = setpgrp
        try:
            pid = os.fork()
        except OSError as exc:
            self.warn(f"unable to fork, sleeping 60 seconds: {exc.strerror}")
            self.pending_how = "system failure"
            self.start_timer = self.loop.call_later(60.0, self._timed_start)
            return
        if pid == 0:
            self._in_child(how, env, setpgrp)
        if setpgrp:
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
        self.last_start = time.monotonic()
        self.childpid = pid
        self.pgid = pid if setpgrp else 0
        self.adopted = False
        self.paused = False
        self.grandchildren.clear()
        self.loop.watch_child(pid, self._on_child_exit)
        self.pidchange(pid, True)
        self.announce()
        self._open_fifo("up")
        self.info(f"pid {self.spid} started child pid {pid}")

    def _in_child(self, how: str, env: dict[str, str], setpgrp: bool) -> None:
        code = 111
        try:
            self.loop.close_in_child()
            reset_child_signals()
            if setpgrp:
                os.setpgid(0, 0)
            if self.stdin is not None:
                os.dup2(self.stdin, 0)
            if self.stdout is not None:
                os.dup2(self.stdout, 1)
            os.chdir(self.svdir)
            if self.runner is not None:
                os.environ.clear()
                os.environ.update(env)
                if self.child_setup is not None:
                    self.child_setup()
                code = self.runner()
            else:
                try:
                    os.execve("./run", ["./run", self.name, how], env)
                except OSError as exc:
                    _say(f"{self.ident}: supervise: fatal: unable to start ./run: {exc.strerror}\n")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 111
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                _say(f"{self.ident}: supervise: fatal: {type(exc).__name__}: {exc}\n")
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
            os._exit(code)

    def _spawn_hook(
        self, path: str, args: list[str], then: Callable[[int, int | None], None] | None
    ) -> None:
        env = self._child_env()
        try:
            pid = os.fork()
        except OSError as exc:
            self.warn(f"unable to fork for {path}: {exc.strerror}")
            if then:
                then(0, None)
            return
        if pid == 0:
            try:
                self.loop.close_in_child()
                reset_child_signals()
                os.chdir(self.svdir)
                os.execve(path, [path, *args], env)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    _say(f"{self.ident}: supervise: fatal: unable to exec {path}: {exc}\n")
            finally:
                os._exit(111)
        self.loop.watch_child(pid, then or (lambda _p, _w: None))

    # --- the child ended -----------------------------------------------
    def _on_child_exit(self, pid: int, wstat: int | None) -> None:
        if pid != self.childpid and pid not in self.grandchildren:
            return
        if self.sticky_orphans(pid):
            return
        self._postmortem(pid, wstat)
        self.childpid = 0
        self.adopted = False
        self.grandchildren.clear()
        self.pidchange(0, False)
        fd = self.fds.pop("up", None)
        if fd is not None:
            os.close(fd)
        self.announce()
        if self.flagexit:
            self._finish()
            return
        if self.wantxx and self.wantup:
            if self.restart_pending:
                self.restart_pending = False
                self.trystart("manual restart")
            elif os.path.exists(self.svdir / "alert"):
                self.busy_hook = True
                code, kind = _describe(wstat)

                def after(_p: int, _w: int | None) -> None:
                    self.busy_hook = False
                    self.trystart("abnormal startup")

                self._spawn_hook("./alert", [self.name, str(pid), code, kind], after)
            else:
                self.trystart("abnormal startup")
        else:
            self._open_fifo("dn")

    def sticky_orphans(self, pid: int) -> bool:
        """In subreaper mode (sticky ``run``), after ``pid`` of the service
        ended: the processes of its group that were reparented to us (a
        daemon that double-forked, or what such a daemon left behind) keep
        the service up; True while there are any."""
        if not self.sticky or self.adopted:
            return False
        self.grandchildren.discard(pid)
        group = self.pgid or pid
        me = os.getpid()
        found = set(self.grandchildren)
        try:
            names = os.listdir("/proc")
        except OSError:
            names = []
        for entry in names:
            if entry.isdigit() and int(entry) not in found:
                info = _proc_stat(int(entry))
                if info and info[0] == me and group in (info[1], info[2]):
                    found.add(int(entry))
        if not found:
            return False
        if not self.grandchildren:
            self.warn(f"pid {pid} did double fork")
        else:
            self.warn(f"pid {pid} double fork by ppid {self.pgid} died")
        for gpid in found - self.grandchildren:
            self.loop.watch_child(gpid, self._on_child_exit)
        self.grandchildren = found
        # svstat shows a live daemon (the fork keeps the dead run's pid and
        # its svstat prints "?pid"); signals go to the run's process group.
        self.childpid = min(found)
        self.pgid = group
        self.announce()
        return True

    def _postmortem(self, pid: int, wstat: int | None) -> None:
        if wstat is None:
            self.warn(f"pid {pid} exited")
        elif os.WIFSIGNALED(wstat):
            self.warn(f"pid {pid} got signal {os.WTERMSIG(wstat)}")
        elif os.WIFEXITED(wstat):
            self.warn(f"pid {pid} exited with status={os.WEXITSTATUS(wstat)}")

    def _finish(self) -> None:
        self.info(f"supervise pid {self.spid} exiting...")
        self.announce()
        self.close()
        if self.on_exit is not None:
            self.on_exit(self)

    # --- control -------------------------------------------------------
    def on_control(self) -> None:
        fd = self.fds.get("control")
        if fd is None:
            return
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError as exc:
            self.warn(f"unable to read control: {exc.strerror}")
            return
        for ch in data.decode("latin-1"):
            if self.closed:
                return
            self.command(ch)

    def kill(self, signals: list[int], group: bool = False) -> None:
        pid = self.childpid
        if not pid:
            return
        targets = sorted(self.grandchildren) if self.grandchildren else [pid]
        for sig in signals:
            if (group or self.grandchildren) and self.pgid:
                try:
                    os.killpg(self.pgid, sig)
                    self.info(f"killed pgid {self.pgid} with signal {sig}")
                    continue
                except OSError:
                    pass  # no such group: the pids themselves
            for target in targets:
                try:
                    os.kill(target, sig)
                except ProcessLookupError:
                    pass
                except OSError as exc:
                    self.warn(f"kill {target} signal {sig}: {exc.strerror}")

    def _shutdown_signal(self) -> int:
        raw = self.env.get("SHUTDOWN_SIGNAL")
        if raw:
            try:
                return int(raw)
            except ValueError:
                pass
        return signal.SIGTERM

    def _stop(self, group: bool, then: Callable[[], None] | None = None) -> None:
        """Shutdown hook (if any), then SHUTDOWN_SIGNAL + CONT."""
        pid = self.childpid

        def sig() -> None:
            self.kill([self._shutdown_signal(), signal.SIGCONT], group)
            if then:
                then()

        if os.path.exists(self.svdir / "shutdown"):
            self._spawn_hook("./shutdown", [self.name, str(pid)], lambda _p, _w: sig())
        else:
            sig()

    def command(self, ch: str) -> None:
        # 'G' holds until a letter that signals the service uses it
        group = self.group_next
        if self.childpid and (ch in SIGNALS or ch in "drpc"):
            self.group_next = False
        if ch == "G":
            self.group_next = True
        elif ch == "u":
            self.wantxx = self.wantup = True
            self.announce()
            if not self.childpid:
                self.trystart("manual startup")
        elif ch == "d":
            self.wantxx, self.wantup = True, False
            self.restart_pending = False
            if self.childpid:
                self.paused = False
                self._stop(group)
            if not self.childpid:
                self._open_fifo("dn")
            self.announce()
        elif ch == "r":
            self.wantxx = self.wantup = True
            if self.childpid:
                self.paused = False
                self.restart_pending = True
                self._stop(group)
                self.announce()
            else:
                self.announce()
                self.trystart("manual restart")
        elif ch == "o":
            self.wantxx = False
            self.announce()
            if not self.childpid:
                self.trystart("one-time startup")
        elif ch == "p":
            self.paused = True
            self.announce()
            self.kill([signal.SIGSTOP], group)
        elif ch == "c":
            self.paused = False
            self.announce()
            self.kill([signal.SIGCONT], group)
        elif ch in SIGNALS:
            self.kill([SIGNALS[ch]], group)
        elif ch == "x":
            self.flagexit = True
            self.announce()
            if not self.childpid and not self.busy_hook:
                self._finish()

    def terminate(self) -> None:
        """SIGTERM to supervise: shutdown hook, signal the group, exit."""
        self.flagexit = True
        self.wantxx, self.wantup = True, False
        self.paused = False
        if self.childpid:
            self._stop(True)
            self.announce()
        elif not self.busy_hook:
            self._finish()


def _describe(wstat: int | None) -> tuple[str, str]:
    if wstat is None:
        return "-1", "unknown"
    if os.WIFSIGNALED(wstat):
        return str(os.WTERMSIG(wstat)), "stopped/signalled"
    if os.WIFSTOPPED(wstat):
        return str(os.WSTOPSIG(wstat)), "stopped/signalled"
    if os.WIFEXITED(wstat):
        return str(os.WEXITSTATUS(wstat)), "exited"
    return "-1", "unknown"


def _say(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def reset_child_signals() -> None:
    """Default dispositions and an empty mask, as a freshly exec'd C program
    expects (Python ignores SIGPIPE and SIGXFSZ)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())


_SUBREAPER = False


def become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our services come to us."""
    global _SUBREAPER
    if _SUBREAPER:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        _SUBREAPER = _prctl(36, 1) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError, ImportError):
        _SUBREAPER = False
    return _SUBREAPER


def _prctl(option: int, arg: int) -> int:
    """libc's prctl(option, arg, 0, 0, 0) through _ctypes alone.

    The ctypes package is left out of the frozen binary on purpose: when it
    is bundled, PyInstaller's bootstrap imports it at the start of every
    command (~3 ms of each sendmail).  Its C half, _ctypes, is all one call
    needs: a C int result type and a cdecl function pointer."""
    import _ctypes

    class _CInt(_ctypes._SimpleCData):
        _type_ = "i"

    class _CFunc(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = _CInt

    handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)
    return _CFunc(_ctypes.dlsym(handle, "prctl"))(option, arg, 0, 0, 0)
