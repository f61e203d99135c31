#!/usr/bin/env python3
"""Throughput and memory: our system against Postfix on this machine, same run.

    python bench/run.py [--quick] [--reps N] [--json PATH]      (as root)

Sets up, in one temp dir under /tmp, everything on 127.0.0.1 only:

* a private Postfix (own config, queue and data dirs; ``postfix -c DIR``),
  smtpd on a free port, ``virtual`` Maildir delivery for
  ``bench@mx.example.test``, ``relay.test`` routed by ``transport_maps`` to
  smtp-sink;
* our rootless instance made by the FROZEN binary (``dist/indimail``, built
  with packaging/pyinstaller/freeze.py when missing), one queue per CPU
  (``--queues``; see docs/queue.md "How many queues"), run under
  our ``svscan``: a ``smtpd`` service (``tcpserver ... qmail-smtpd``, rules
  ``127.:allow,RELAYCLIENT=""``) and a ``send`` service (``qscheduler -s
  ./Maildir/``), each with a ``multilog`` logger; ``relay.test`` goes to the
  same smtp-sink by ``smtproutes``;
* one ``smtp-sink`` (``-u nobody``, one dump file per message).

Both systems fsync (ours always does; Postfix fsyncs its queue file and the
Maildir file).  Scenarios, each run alternating ours/Postfix (who goes first
alternates per repetition), ``--reps`` times (3; ``--quick``: 1 rep, 100
messages):

* ``smtp-local cN``: ``smtp-source -s N -m 2000 -l 4096`` -> Maildir; the
  clock stops when the last file is in ``new/``.
* ``smtp-relay c20``: 2000 messages to ``relay.test``; the clock stops when
  the sink has all of them.
* ``inject``: 500 sequential ``sendmail`` runs (ours: the frozen binary's
  ``bin/sendmail``; Postfix: ``/usr/sbin/sendmail`` with MAIL_CONFIG), clock
  stops when the last is in ``new/``.
* ``idle``: Pss sum of every process of each full system 10 s after a
  short SMTP load (200 messages at c20 to each, so that both have their
  listener's and delivery processes as a server that just had traffic);
  ``idle 110 s``: the same 110 s after that load, when Postfix's
  ``max_idle`` (100 s) has ended its idle smtpd, cleanup and delivery
  processes and ours have retired their idle workers too.

During each run the Pss of both process trees (ours: svscan and all its
descendants; Postfix: master and its children) is sampled every 0.5 s
(only the system under load: reading smaps_rollup costs CPU); the table
shows our peak.  The last column counts the disk cache flushes per message
(the block device's "flush requests completed" in /proc/diskstats, read
before and after each run): every fsync of a file or directory ends in one,
and they, not the CPU, bound a durable MTA at low concurrency.  The two
columns before it are each system's CPU time per message (user + system of
its whole process tree, read before the run and after its queue is empty
again; for ``inject`` also the sendmail runs), the bound at high
concurrency, and its user-space part (the rest is the kernel's work for
it: files, syncs, loopback TCP).  Prints
the table and writes it as JSON.
Everything started is stopped by pid, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from private_postfix import PrivatePostfix, free_port  # noqa: E402
from supervision_footprint import descendants, proc_stats, pss_kb  # noqa: E402

FROZEN = Path(os.environ.get("INDIMAIL_FROZEN") or ROOT / "dist" / "indimail") / "indimail"
HOST = "mx.example.test"
RCPT = f"bench@{HOST}"
RELAY_RCPT = "sink@relay.test"
SENDER = "src@example.org"
SIZE = 4096


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(100)  # the greeting
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout} s")


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    return res


def tree_pss(root: int | None) -> tuple[int, int]:
    """(Pss kB summed over root and its descendants, process count)."""
    if not root:
        return 0, 0
    pids = descendants(root)
    return sum(pss_kb(p) for p in pids), len(pids)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def count_files(d: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(d))
    except FileNotFoundError:
        return 0


def empty_maildir(md: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        d = md / sub
        if d.is_dir():
            for e in os.scandir(d):
                os.unlink(e.path)


# -- smtp-sink -----------------------------------------------------------------
class Sink:
    def __init__(self, top: Path) -> None:
        self.dump = top / "sink"
        self.dump.mkdir()
        os.chmod(self.dump, 0o777)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
                "-u",
                "nobody",
                "-d",
                str(self.dump) + "/%M.",
                f"127.0.0.1:{self.port}",
                "256",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(top / "sink.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        wait_port(self.port)

    def count(self) -> int:
        return count_files(self.dump)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- Postfix -------------------------------------------------------------------
class Postfix(PrivatePostfix):
    """The private Postfix, plus relay.test routed to the smtp-sink."""

    name = "postfix"

    def __init__(self, top: Path, sink_port: int) -> None:
        top.mkdir(parents=True)
        (top / "transport").write_text(f"relay.test smtp:[127.0.0.1]:{sink_port}\n")
        super().__init__(
            top,
            HOST,
            ["bench"],
            hostname="pf.example.test",
            settings={
                "smtp_host_lookup": "native",
                "transport_maps": f"texthash:{top / 'transport'}",
                "relay_domains": "relay.test",
            },
        )
        self.maildir = self.mail / "bench" / "Maildir"

    def start(self) -> None:
        super().start()
        wait_port(self.port)

    def root_pid(self) -> int | None:
        return self.master_pid()

    def inject_cmd(self) -> list[str]:
        return ["/usr/sbin/sendmail", "-f", SENDER, RCPT]


# -- ours ------------------------------------------------------------------------
def frozen_is_stale() -> bool:
    """Whether a source file changed after dist/ was frozen (freeze.py
    writes .source-hash last): the figures would be for older code.  A
    tree named by INDIMAIL_FROZEN (an installed one, say) is taken as is."""
    if os.environ.get("INDIMAIL_FROZEN"):
        return False
    try:
        built = (FROZEN.parent / ".source-hash").stat().st_mtime
    except OSError:
        return True
    newest = max((f.stat().st_mtime for f in (ROOT / "src").rglob("*.py")), default=0.0)
    return newest > built


def ensure_frozen(rebuild: bool) -> Path:
    if FROZEN.exists() and not rebuild:
        if not frozen_is_stale():
            return FROZEN
        log(f"{FROZEN.parent} is older than src/ (a source changed since): rebuilding")
    log("building the frozen binary (packaging/pyinstaller/freeze.py)")
    run(
        [
            sys.executable,
            str(ROOT / "packaging/pyinstaller/freeze.py"),
            "--dist",
            str(ROOT / "dist"),
        ],
        timeout=900,
        cwd=ROOT,
    )
    if not FROZEN.exists():
        raise RuntimeError(f"freeze.py did not make {FROZEN}")
    return FROZEN


RUN_SMTPD = """#!/bin/sh
exec 2>&1
exec tcpserver -v -R -H -l {host} -x {rules} -c 64 -C 64 127.0.0.1 {port} qmail-smtpd
"""
RUN_SEND = """#!/bin/sh
exec 2>&1
cd {top} || exit 111
exec qscheduler -s ./Maildir/
"""
RUN_LOG = "#!/bin/sh\nexec multilog t ./main\n"


class Ours:
    name = "ours"

    def __init__(self, top: Path, frozen: Path, sink_port: int, queues: int) -> None:
        self.top = top
        run(
            [str(frozen), "indimail-instance", "-q", str(queues), "-H", HOST, str(top)],
            timeout=120,
        )
        self.bin = top / "bin"
        home = top / "home" / "bench"
        self.maildir = home / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        (home / ".qmail").write_text("./Maildir/\n")
        assign = top / "etc" / "users" / "assign"
        lines = assign.read_text().splitlines()
        lines.insert(0, f"=bench:root:0:0:{home}:::")
        assign.write_text("\n".join(lines) + "\n")
        run([str(self.bin / "qmail-newu")], env=self.env())
        (top / "etc" / "control" / "smtproutes").write_text(f"relay.test:127.0.0.1:{sink_port}\n")
        rules = top / "etc" / "tcp.smtp.cdb"
        subprocess.run(
            [str(self.bin / "tcprules"), str(rules), str(rules) + ".tmp"],
            input=b'127.:allow,RELAYCLIENT=""\n:deny\n',
            check=True,
            capture_output=True,
            timeout=30,
            env=self.env(),
        )
        self.port = free_port()
        self.scandir = top / "service"
        self.scandir.mkdir(exist_ok=True)
        scripts = {
            "smtpd": RUN_SMTPD.format(host=HOST, rules=rules, port=self.port),
            "send": RUN_SEND.format(top=top),
        }
        for name, text in scripts.items():
            svc = self.scandir / name
            (svc / "log").mkdir(parents=True)
            (svc / "run").write_text(text)
            (svc / "log" / "run").write_text(RUN_LOG)
            os.chmod(svc / "run", 0o755)
            os.chmod(svc / "log" / "run", 0o755)
        self.proc: subprocess.Popen | None = None
        self.frozen = frozen

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.top / "home"),
            "INDIMAIL_PATHS": str(self.top / "indimail-paths.conf"),
            "LANG": "C.UTF-8",
        }

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.bin / "svscan"), str(self.scandir)],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=open(self.top / "svscan.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port)

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def queue_empty(self) -> bool:
        for q in (self.top / "var" / "queue").glob("queue*"):
            for sub in ("mess", "todo", "intd"):
                d = q / sub
                if d.is_dir() and any(f.is_file() for f in d.rglob("*")):
                    return False
        return True

    def inject_cmd(self) -> list[str]:
        return [str(self.bin / "sendmail"), "-f", SENDER, RCPT]

    def stop(self) -> None:
        """TERM, then KILL, every process of svscan's session (svscan was
        started with a new session, so its sid is its pid) and every
        descendant, in bounded rounds until none is left: a supervisor may
        restart a service between two signals."""
        if self.proc is None:
            return
        sid = self.proc.pid
        for rnd in range(8):
            pids = set(session_pids(sid))
            if self.proc.poll() is None:
                pids |= set(descendants(sid))
            if not pids:
                break
            sig = signal.SIGTERM if rnd < 2 else signal.SIGKILL
            for p in sorted(pids):  # svscan (lowest pid, its sid) first
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + (3 if rnd < 2 else 1)
            while time.monotonic() < deadline:
                self.proc.poll()
                if not any(os.path.exists(f"/proc/{p}") for p in pids):
                    break
                time.sleep(0.1)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        left = session_pids(sid)
        if left:
            log(f"processes left in session {sid}: {left}")


# -- measuring ---------------------------------------------------------------------
class PssSampler:
    """Samples the Pss sum of each system's process tree every ``period`` s."""

    def __init__(self, systems, period: float = 0.5) -> None:
        self.systems = systems
        self.period = period
        self.peak = {s.name: 0 for s in systems}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for s in self.systems:
                kb, _ = tree_pss(s.root_pid())
                self.peak[s.name] = max(self.peak[s.name], kb)
            self._stop.wait(self.period)

    def __enter__(self) -> PssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)


def wait_count(counter, target: int, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        n = counter()
        now = time.monotonic()
        if n >= target:
            return now
        if now > deadline:
            raise RuntimeError(f"{what}: {n}/{target} after {timeout:.0f} s")
        time.sleep(0.02)


def settle(system, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not system.queue_empty():
        time.sleep(0.1)
    time.sleep(0.5)


def smtp_source(port: int, conc: int, count: int, rcpt: str, timeout: float) -> None:
    run(
        [
            shutil.which("smtp-source") or "/usr/sbin/smtp-source",
            "-4",
            "-s",
            str(conc),
            "-m",
            str(count),
            "-l",
            str(SIZE),
            "-f",
            SENDER,
            "-t",
            rcpt,
            "-M",
            "client.example.org",
            f"127.0.0.1:{port}",
        ],
        timeout=timeout,
    )


def disk_flushes(path: Path) -> int | None:
    """Flush requests the block device holding ``path`` has completed
    (/proc/diskstats, Linux 5.5+); None when it cannot be told."""
    while not path.exists() and path != path.parent:  # Postfix makes it late
        path = path.parent
    st = os.stat(path)
    want = (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 18 and (int(fields[0]), int(fields[1])) == want:
                    return int(fields[18])
    except (OSError, ValueError):
        pass
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_ticks(root: int | None) -> tuple[int, int]:
    """CPU time (clock ticks: user, system; own and of reaped children) of
    ``root`` and its descendants.  The difference of two readings is what
    the tree spent in between: a process that ended meanwhile is counted
    in its parent's children's time (all its life), and what it had spent
    before the first reading was in that reading."""
    if not root:
        return 0, 0
    stats = proc_stats()  # one reading of /proc for the tree and its times
    user = system = 0
    for pid in descendants(root, stats):
        fields = stats.get(pid)
        if fields is not None:
            user += int(fields[11]) + int(fields[13])  # utime cutime
            system += int(fields[12]) + int(fields[14])  # stime cstime
    return user, system


def _children_ticks() -> tuple[float, float]:
    t = os.times()
    return t.children_user * _TICK, t.children_system * _TICK


def one_run(system, scenario: str, count: int, sink: Sink, timeout: float) -> dict:
    settle(system)
    flushes0 = disk_flushes(system.maildir)
    cpu0, children0 = tree_cpu_ticks(system.root_pid()), _children_ticks()
    if scenario.startswith("smtp-local"):
        conc = int(scenario.rsplit("c", 1)[1])
        empty_maildir(system.maildir)
        t0 = time.monotonic()
        smtp_source(system.port, conc, count, RCPT, timeout)
        t1 = wait_count(lambda: count_files(system.maildir / "new"), count, timeout, scenario)
    elif scenario.startswith("smtp-relay"):
        conc = int(scenario.rsplit("c", 1)[1])
        base = sink.count()
        t0 = time.monotonic()
        smtp_source(system.port, conc, count, RELAY_RCPT, timeout)
        t1 = wait_count(lambda: sink.count() - base, count, timeout, scenario)
    elif scenario == "inject":
        empty_maildir(system.maildir)
        head = f"From: {SENDER}\nTo: {RCPT}\nSubject: bench\n\n".encode()
        body = head + (b"x" * 75 + b"\n") * (SIZE // 76)
        env = system.env()
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        for _ in range(count):
            res = subprocess.run(
                system.inject_cmd(), input=body, capture_output=True, env=env, timeout=30
            )
            if res.returncode != 0:
                raise RuntimeError(f"{system.name} sendmail: {res.stderr.decode()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"inject: over {timeout:.0f} s")
        t1 = wait_count(lambda: count_files(system.maildir / "new"), count, timeout, scenario)
    else:
        raise ValueError(scenario)
    secs = t1 - t0
    flushes1 = disk_flushes(system.maildir)
    settle(system)  # what the messages cost includes cleaning up after them
    cpu1 = tree_cpu_ticks(system.root_pid())
    user, ticks = cpu1[0] - cpu0[0], sum(cpu1) - sum(cpu0)
    if scenario == "inject":  # the sendmail runs (and Postfix's postdrop)
        children1 = _children_ticks()
        user += children1[0] - children0[0]
        ticks += sum(children1) - sum(children0)
    per_msg = None
    if flushes0 is not None and flushes1 is not None:
        per_msg = (flushes1 - flushes0) / count
    return {
        "system": system.name,
        "seconds": secs,
        "rate": count / secs,
        "flushes": per_msg,
        # CPU per message of the whole system (not the load generator)
        "cpu_ms": ticks * 1000 / _TICK / count,
        # its user-space part: where a Python MTA and a C one differ
        "user_ms": user * 1000 / _TICK / count,
    }


QUEUE_MAX = 20  # the original's upper bound on QUEUE_COUNT


def default_queues() -> int:
    """One queue per CPU.  A queue is four resident processes (qmail-send,
    qmail-lspawn, qmail-rspawn, qmail-clean); more queues than CPUs add
    their memory but no throughput (docs/queue.md "How many queues")."""
    return max(1, min(os.cpu_count() or 1, QUEUE_MAX))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 messages (50 inject), 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds idle before `idle`")
    ap.add_argument(
        "--long-idle",
        type=float,
        default=None,
        help="seconds after the load for a second idle reading, once Postfix's"
        " max_idle (100 s) has ended its idle smtpd/cleanup/delivery processes"
        " (default 110; --quick: 0 = none)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the frozen binary first")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument(
        "--queues",
        type=int,
        default=default_queues(),
        help="our queue count (default: one per CPU, at most QUEUE_MAX 20)",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.queues <= QUEUE_MAX:
        ap.error(f"--queues {args.queues}: must be 1 to {QUEUE_MAX}")
    if os.geteuid() != 0:
        print("bench/run.py: needs root (a private Postfix starts as root)", file=sys.stderr)
        return 2
    for prog in ("postfix", "postconf", "smtp-source", "smtp-sink"):
        if not shutil.which(prog, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")):
            print(f"bench/run.py: {prog} missing (apt-get install postfix)", file=sys.stderr)
            return 2
    os.environ["PATH"] = "/usr/sbin:" + os.environ.get("PATH", "/usr/bin:/bin")
    reps = args.reps or (1 if args.quick else 3)
    n_smtp = 100 if args.quick else 2000
    n_inject = 50 if args.quick else 500
    n_idle_load = 20 if args.quick else 200
    long_idle = args.long_idle if args.long_idle is not None else (0.0 if args.quick else 110.0)
    timeout = 120 if args.quick else 600
    scenarios = [
        ("smtp-local c1", n_smtp),
        ("smtp-local c5", n_smtp),
        ("smtp-local c20", n_smtp),
        ("smtp-relay c20", n_smtp),
        ("inject", n_inject),
    ]
    json_path = args.json or HERE / ("results-quick.json" if args.quick else "results.json")
    started = time.monotonic()
    frozen = ensure_frozen(args.rebuild)
    top = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    os.chmod(top, 0o755)
    sink = pf = ours = None
    results: dict = {"runs": [], "rows": []}
    try:
        sink = Sink(top)
        pf = Postfix(top / "postfix", sink.port)
        ours = Ours(top / "ours", frozen, sink.port, args.queues)
        pf.start()
        ours.start()
        systems = [ours, pf]
        log(
            f"up in {time.monotonic() - started:.1f} s; top {top}; reps {reps}; "
            f"our queues {args.queues}"
        )
        # warm-up: one message each, so first-run effects do not count
        for s in systems:
            one_run(s, "smtp-local c1", 1, sink, 60)
        for scenario, count in scenarios:
            rates: dict[str, list[float]] = {"ours": [], "postfix": []}
            flushes: dict[str, list[float]] = {"ours": [], "postfix": []}
            cpu: dict[str, list[float]] = {"ours": [], "postfix": []}
            user: dict[str, list[float]] = {"ours": [], "postfix": []}
            peaks: dict[str, int] = {"ours": 0, "postfix": 0}
            for rep in range(reps):
                order = systems if rep % 2 == 0 else systems[::-1]
                for s in order:
                    with PssSampler([s]) as samp:  # only the one under load
                        r = one_run(s, scenario, count, sink, timeout)
                    peaks[s.name] = max(peaks[s.name], samp.peak[s.name])
                    r.update(scenario=scenario, rep=rep, count=count, peak_pss_kb=samp.peak[s.name])
                    results["runs"].append(r)
                    rates[s.name].append(r["rate"])
                    fl = r["flushes"]
                    if fl is not None:
                        flushes[s.name].append(fl)
                    cpu[s.name].append(r["cpu_ms"])
                    user[s.name].append(r["user_ms"])
                    log(
                        f"{scenario:15s} rep {rep} {s.name:7s} "
                        f"{r['rate']:8.1f} msg/s ({r['seconds']:.2f} s), "
                        f"{r['cpu_ms']:.2f} ms CPU/msg ({r['user_ms']:.2f} user)"
                        + (f", {fl:.2f} disk flushes/msg" if fl is not None else "")
                    )
            o, p = statistics.median(rates["ours"]), statistics.median(rates["postfix"])
            results["rows"].append(
                {
                    "scenario": scenario,
                    "messages": count,
                    "ours_rate": o,
                    "postfix_rate": p,
                    "ratio": o / p,
                    "ours_peak_pss_kb": peaks["ours"],
                    "postfix_peak_pss_kb": peaks["postfix"],
                    # disk cache flushes per message (fsync and directory
                    # syncs end in one each): the bound of a durable MTA
                    "ours_flushes": _median_or_none(flushes["ours"]),
                    "postfix_flushes": _median_or_none(flushes["postfix"]),
                    # CPU time of each whole system per message
                    "ours_cpu_ms": statistics.median(cpu["ours"]),
                    "postfix_cpu_ms": statistics.median(cpu["postfix"]),
                    # its user-space part (the rest is the kernel's)
                    "ours_user_ms": statistics.median(user["ours"]),
                    "postfix_user_ms": statistics.median(user["postfix"]),
                }
            )
        # "idle" is each full system 10 s after load.  The last scenario
        # (inject) reaches neither smtpd, and how long ago the SMTP
        # scenarios ended depends on the machine's speed: past Postfix's
        # max_idle (100 s) its smtpd and cleanup processes are gone, before
        # it they are not.  So both get the same short SMTP load first.
        for s in systems:  # one_run ends when the queue is empty again
            one_run(s, "smtp-local c20", n_idle_load, sink, timeout)
        loaded = time.monotonic()
        log(f"idle {args.idle:.0f} s")
        time.sleep(args.idle)
        results["rows"].append(idle_row("idle", ours, pf))
        if long_idle > 0:
            log(f"idle until {long_idle:.0f} s after the load")
            time.sleep(max(0.0, loaded + long_idle - time.monotonic()))
            results["rows"].append(idle_row("idle-long", ours, pf, long_idle))
    finally:
        for thing in (ours, pf, sink):
            if thing is not None:
                try:
                    thing.stop()
                except Exception as exc:  # keep cleaning up
                    log(f"stopping {type(thing).__name__}: {exc}")
        if args.keep:
            log(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    results.update(
        quick=args.quick,
        reps=reps,
        message_size=SIZE,
        seconds=time.monotonic() - started,
        cpus=os.cpu_count(),
        queues=args.queues,
    )
    table = format_table(results)
    print(table)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(JSON: {json_path}; {results['seconds']:.0f} s)")
    return 0


def idle_row(name: str, ours, pf, after: float | None = None) -> dict:
    (okb, on), (pkb, pn) = tree_pss(ours.root_pid()), tree_pss(pf.root_pid())
    return {
        "scenario": name,
        "after_s": after,
        "ours_pss_kb": okb,
        "ours_processes": on,
        "postfix_pss_kb": pkb,
        "postfix_processes": pn,
        "ratio": okb / pkb if pkb else 0.0,
        "ours_peak_pss_kb": okb,
    }


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _flush_pair(r: dict) -> str:
    o, p = r.get("ours_flushes"), r.get("postfix_flushes")
    if o is None or p is None:
        return ""
    return f" {o:>6.2f} / {p:<5.2f}"


def format_table(results: dict) -> str:
    head = (
        f"{'scenario':16s} {'ours msg/s':>11s} {'Postfix msg/s':>14s}"
        f" {'ratio':>6s} {'our peak Pss':>13s} {'CPU ms/msg ours / Postfix':>26s}"
        f" {'user ms/msg ours / Postfix':>26s} {'flushes/msg ours / Postfix'}"
    )
    lines = [f"(our queues: {results['queues']}; CPUs: {results['cpus']})", head, "-" * len(head)]
    for r in results["rows"]:
        if r["scenario"].startswith("idle"):
            label = "idle (Pss MB)"
            if r["scenario"] != "idle":
                label = f"idle {r['after_s']:.0f} s (Pss)"
            lines.append(
                f"{label:16s} {r['ours_pss_kb'] / 1024:>8.1f} MB"
                f" {r['postfix_pss_kb'] / 1024:>11.1f} MB"
                f" {r['ratio']:>6.2f} {r['ours_peak_pss_kb'] / 1024:>10.1f} MB"
                f"   ({r['ours_processes']} vs {r['postfix_processes']} processes)"
            )
        else:
            lines.append(
                f"{r['scenario']:16s} {r['ours_rate']:>11.1f} {r['postfix_rate']:>14.1f}"
                f" {r['ratio']:>6.2f} {r['ours_peak_pss_kb'] / 1024:>10.1f} MB"
                f" {r['ours_cpu_ms']:>13.2f} / {r['postfix_cpu_ms']:<10.2f}"
                f" {r['ours_user_ms']:>13.2f} / {r['postfix_user_ms']:<10.2f}"
                f"{_flush_pair(r)}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
