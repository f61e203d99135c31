"""tcpserver: accept TCP connections and run a program for each.

``tcpserver [opts] host|/socket port prog [args]`` - options, environment
and log lines as indimail-mta's tcpserver (``docs/tcpserver.md``).

One process listens; each connection is served by a forked child that sets
up the environment (``PROTO``, ``TCPLOCALIP`` ...), follows the rules of
``-x rules.cdb`` and then runs ``prog`` on fds 0/1:

* ``prog`` one of ours (:mod:`indimail.ucspi.inproc`): the child calls it
  in-process (``cli.run``) - no exec, no interpreter start.  Its module was
  imported by the listening process before the first accept, so the fork
  shares it warm.  The child publishes the connection through
  :mod:`indimail.ucspi.context`.
* any other program: ``execvp``, as the original.

When the in-process command declares ``UCSPI_POOL = True`` (qmail-smtpd),
pre-forked workers accept on the listening socket themselves and serve one
connection after another instead of a fork each (:mod:`indimail.ucspi.pool`;
``TCPSERVER_POOL=0`` turns it off).  ``-c``, ``-C`` and the log lines are as
described here: a worker counts the sessions in a table shared with the
listener and logs its own sessions' lines.

With TLS (``-n``/``-s``) the child does the handshake (bounded by ``-S``)
and either hands the TLS socket to an in-process command that declares
``UCSPI_TLS_AWARE = True`` or relays plain bytes to the program through a
socketpair (one more fork, no exec), with ``-T`` as the idle timeout.

The listening process never reads from a client; it stops accepting while
``-c`` children run (new connections wait in the backlog), refuses a client
that already has ``-C`` connections, and reaps children as SIGCHLD arrives.
"""

from __future__ import annotations

import errno
import getopt
import os
import select
import selectors
import signal
import socket
import ssl
import stat
import sys
import time

from indimail.core import control
from indimail.core.errors import EXIT_TEMP, Fatal, UsageError, exit_child
from indimail.ucspi import addr, context, inproc, pool

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from indimail.ucspi import rules

DROP = "tcpserver: warning: dropping connection, "
OPTSTRING = "dDe:vqQhHrR1UXx:m:t:T:u:g:l:b:B:c:C:pPoO46I:sNn:a:f:M:i:L:S:z"
USAGE = (
    "usage: tcpserver [ -461UXpPhHrRoOdDqQvsNz ] [ -c limit | -c file ] [ -C perhostlimit ] "
    "[ -x rules.cdb ] [ -B banner ] [ -g gid ] [ -u uid ] [ -b backlog ] [ -l localname ] "
    "[ -t timeout ] [ -T timeoutidle ] [ -e pidfile ] [ -i certdir ] [ -n certfile ] "
    "[ -f cipherfile ] [ -M method ] [ -a cafile ] [ -L crlfile ] [ -S timeout ] "
    "host port program"
)
RELAY_BUFFER = 1 << 16
ACCEPT_BURST = 64


class Options:
    """The command line's settings; the class attributes are the defaults
    (a plain class: ``dataclasses`` would bring ``inspect`` and ``ast``
    into the listener, ~1.3 MB it keeps for good)."""

    verbosity: int = 1
    killopts: bool = True
    delay: bool = True
    banner: str = ""
    remoteinfo: bool = True
    remotehost: bool = True
    paranoid: bool = False
    itimeout: int = 26
    ctimeout: int = 60
    dtimeout: int = 300
    maxperip: int = 20
    perhostlimit: int = 20
    limit: int = 40
    limitfile: str | None = None
    backlog: int = 20
    rules: str | None = None
    allow_norules: bool = False
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    groups: list[str]  # set in __init__: a list of its own per instance
    print_port: bool = False
    localhost: str | None = None
    noipv6: bool = False
    forcev6: bool = False
    pidfile: str | None = None
    ssl: bool = False
    certfile: str = ""
    cafile: str = ""
    crlfile: str = ""
    cipherfile: str | None = None
    method: str | None = None
    certdir: str | None = None
    provide_data: bool = False
    renegotiation: bool = False

    def __init__(self) -> None:
        self.groups = []


def _num(value: str, what: str) -> int:
    digits = ""
    for ch in value:
        if not ch.isdecimal():
            break
        digits += ch
    if not digits:
        raise UsageError(f"{what}: not a number: {value!r}\n{USAGE}")
    return int(digits)


def parse_options(argv: list[str]) -> tuple[Options, list[str]]:
    o = Options()
    if os.environ.get("MAXPERIP"):
        o.perhostlimit = o.maxperip = _num(os.environ["MAXPERIP"], "MAXPERIP")
    try:
        opts, rest = getopt.getopt(argv[1:], OPTSTRING)
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc.msg}\n{USAGE}") from None
    for opt, val in opts:
        c = opt[1]
        if c == "e":
            o.pidfile = val
        elif c == "c":
            if val.isdecimal():
                o.limit = int(val)
                o.limitfile = None
            else:
                o.limitfile = val
                o.limit = read_limit(val, o.limit)
        elif c == "C":
            o.perhostlimit = o.maxperip = _num(val, "-C")
        elif c == "b":
            o.backlog = _num(val, "-b")
        elif c == "X":
            o.allow_norules = True
        elif c == "x":
            o.rules = val
        elif c == "m":
            raise Fatal(EXIT_TEMP, "fatal: -m (MySQL rules) is not supported; use -x rules.cdb")
        elif c == "B":
            o.banner = val
        elif c in "dD":
            o.delay = c == "d"
        elif c == "v":
            o.verbosity = 2
        elif c == "q":
            o.verbosity = 0
        elif c == "Q":
            o.verbosity = 1
        elif c in "pP":
            o.paranoid = c == "p"
        elif c in "oO":
            o.killopts = c == "O"
        elif c in "hH":
            o.remotehost = c == "h"
        elif c in "rR":
            o.remoteinfo = c == "r"
        elif c == "t":
            o.itimeout = _num(val, "-t")
        elif c == "T":
            o.dtimeout = _num(val, "-T")
        elif c == "U":
            if os.environ.get("UID", "").isdecimal():
                o.uid = int(os.environ["UID"])
            if os.environ.get("GID", "").isdecimal():
                o.gid = int(os.environ["GID"])
        elif c == "u":
            if val.isdecimal():
                o.uid = int(val)
            else:
                o.user = val
        elif c == "g":
            o.groups = [g for g in val.split(",") if g]
            if val.isdecimal():
                o.gid = int(val)
        elif c == "1":
            o.print_port = True
        elif c == "l":
            o.localhost = val
        elif c == "4":
            o.noipv6 = True
        elif c == "6":
            o.forcev6 = True
        elif c == "I":
            pass  # interface binding: accepted, not implemented (docs/tcpserver.md)
        elif c == "s":
            o.ssl = True
        elif c == "N":
            o.renegotiation = True
        elif c == "n":
            o.ssl = True
            if val:
                o.certfile = val
        elif c == "a":
            o.cafile = val
        elif c == "L":
            o.crlfile = val
        elif c == "f":
            o.cipherfile = val
        elif c == "M":
            o.method = val
        elif c == "i":
            o.certdir = val
        elif c == "S":
            o.ctimeout = _num(val, "-S")
        elif c == "z":
            o.provide_data = True
    return o, rest


def read_limit(path: str, default: int) -> int:
    """``-c file``: the first line is the limit (control_readint)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(64).strip()
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise Fatal(EXIT_TEMP, f"fatal: unable to read {path}: {exc.strerror}") from None
    if not line.isdigit():
        raise Fatal(EXIT_TEMP, f"fatal: unable to read {path}: not a number")
    return int(line)


def safe(text: str, limit: int = 100) -> str:
    """The original's log sanitising: unprintables and % become ?."""
    out = []
    for i, ch in enumerate(text):
        if i == limit:
            out.append("...")
            break
        o = ord(ch)
        out.append("?" if o < 33 or o > 126 or ch == "%" else ch)
    return "".join(out)


# -- TLS -------------------------------------------------------------------------


def _certpath(certdir: str, name: str) -> str:
    return name if name.startswith((".", "/")) else os.path.join(certdir, name)


def make_tls_context(o: Options) -> ssl.SSLContext:
    certdir = o.certdir or os.environ.get("CERTDIR")
    if not certdir:
        try:
            from indimail.core import paths

            certdir = str(paths.get().certdir)
        except Exception:
            certdir = "/etc/indimail/certs"
    certfile = o.certfile or _certpath(certdir, os.environ.get("TLS_CERTFILE") or "servercert.pem")
    cafile = o.cafile or _certpath(certdir, os.environ.get("CLIENTCA") or "clientca.pem")
    crlfile = o.crlfile or _certpath(certdir, os.environ.get("CLIENTCRL") or "clientcrl.pem")
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile)
        if o.method:
            versions = {
                "TLSv1": ssl.TLSVersion.TLSv1,
                "TLSv1_1": ssl.TLSVersion.TLSv1_1,
                "TLSv1_2": ssl.TLSVersion.TLSv1_2,
                "TLSv1_3": ssl.TLSVersion.TLSv1_3,
            }
            if o.method in versions:
                ctx.minimum_version = ctx.maximum_version = versions[o.method]
        if os.access(cafile, os.R_OK):
            ctx.load_verify_locations(cafile)
            ctx.verify_mode = ssl.CERT_OPTIONAL
            if os.access(crlfile, os.R_OK):
                ctx.load_verify_locations(crlfile)
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ciphers = None
        if o.cipherfile:
            with open(o.cipherfile, encoding="ascii", errors="replace") as f:
                words = f.read(4096).split()
            ciphers = words[0] if words else None
        else:
            ciphers = os.environ.get("TLS_CIPHER_LIST")
        if ciphers:
            ctx.set_ciphers(ciphers)
        if not o.renegotiation and hasattr(ssl, "OP_NO_RENEGOTIATION"):
            ctx.options |= ssl.OP_NO_RENEGOTIATION
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise Fatal(EXIT_TEMP, f"fatal: unable to initialize TLS: {certfile}: {exc}") from None
    return ctx


def tls_description(tls: ssl.SSLSocket) -> str:
    cipher = tls.cipher() or ("?", "?", 0)
    version = tls.version() or "?"
    return f"TLS Server={version}, Client={version}, Ciphers={cipher[0]}, bits={cipher[2]}"


def relay(tls: ssl.SSLSocket, plain: socket.socket, idle: float) -> None:
    """Copy between the TLS session and the program's socket until either
    the program closes its side or nothing moves for ``idle`` seconds."""
    tls.setblocking(False)
    plain.setblocking(False)
    up = bytearray()  # client -> program
    down = bytearray()  # program -> client
    tls_open = plain_open = True
    plain_wr_shut = False
    poller = select.poll()
    tfd, pfd = tls.fileno(), plain.fileno()
    while True:
        if tls_open and len(up) < RELAY_BUFFER:
            try:
                while len(up) < RELAY_BUFFER:
                    data = tls.recv(16384)
                    if not data:
                        tls_open = False
                        break
                    up += data
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (ssl.SSLError, OSError):
                tls_open = False
        if up:
            try:
                del up[: plain.send(up)]
            except BlockingIOError:
                pass
            except OSError:
                return
        if not tls_open and not up and not plain_wr_shut:
            plain_wr_shut = True
            try:
                plain.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if plain_open and len(down) < RELAY_BUFFER:
            try:
                data = plain.recv(RELAY_BUFFER)
                if data:
                    down += data
                else:
                    plain_open = False
            except BlockingIOError:
                pass
            except OSError:
                plain_open = False
        if down:
            try:
                del down[: tls.send(down)]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (ssl.SSLError, OSError):
                return
        if not plain_open and not down:
            return
        tmask = (select.POLLIN if tls_open and len(up) < RELAY_BUFFER else 0) | (
            select.POLLOUT if down else 0
        )
        pmask = (select.POLLIN if plain_open and len(down) < RELAY_BUFFER else 0) | (
            select.POLLOUT if up else 0
        )
        if tls_open and tls.pending() and len(up) < RELAY_BUFFER:
            continue
        for fd, mask in ((tfd, tmask), (pfd, pmask)):
            if mask:
                poller.register(fd, mask)
            else:
                try:
                    poller.unregister(fd)
                except KeyError:
                    pass
        if not tmask and not pmask:
            return
        if not poller.poll(idle * 1000):
            return


# -- the server ------------------------------------------------------------------


class Server:
    def __init__(self, o: Options, host: str, port: str | None, argv: list[str]) -> None:
        self.o = o
        self.host = host
        self.port_text = port
        self.argv = argv
        self.unix_path = host if host.startswith("/") else None
        self.children: dict[int, bytes] = {}  # pid -> remote address (16 bytes)
        self.sock: socket.socket | None = None
        self.tls_ctx: ssl.SSLContext | None = None
        self.resolver = None
        self.ours: str | None = None
        self.ours_tls_aware = False
        self.localport = 0
        self.pending: set[int] = set()
        self.pool: pool.Pool | None = None
        self.pool_settings = pool.Settings({})
        self.pool_wanted = False
        self.child_slots: dict[int, int] = {}  # forked child's pid -> its table slot
        self._rules: rules.Cache | None = None

    def rules_cache(self) -> rules.Cache:
        """The ``-x`` file's decisions (made once; a pool worker keeps its
        copy from one connection to the next)."""
        if self._rules is None:
            from indimail.ucspi import rules

            self._rules = rules.Cache(self.o.rules or "")
        return self._rules

    # logging
    def warn(self, text: str) -> None:
        if self.o.verbosity > 0:
            try:
                os.write(2, (text + "\n").encode("utf-8", "surrogateescape"))
            except OSError:
                pass

    def status(
        self, what: str, pid: int, ip: str | None = None, tls: str | None = None, child: int = 0
    ) -> None:
        if self.o.verbosity < 2:
            return
        line = f"tcpserver: status: {self.active()}/{self.o.limit} {what}"
        if tls is not None:
            line += f", sslpid={pid}" + (f", childpid={child}" if child else "")
        else:
            line += f", pid={pid}"
        if what == "startup":
            line += f", TLS={'enabled' if self.tls_ctx else 'disabled'}, use sql=NO"
        elif ip is not None:
            line += f", IP {safe(ip)}"
        if tls is not None:
            line += ", " + tls
        self.warn(line)

    @property
    def table(self) -> pool.Table | None:
        """With the pool: who serves whom (shared with every fork)."""
        return self.pool.table if self.pool is not None else None

    def active(self) -> int:
        """Sessions being served (the status lines' count)."""
        if self.table is not None:
            return self.table.count(pool.BUSY)
        return len(self.children)

    def places(self) -> int:
        """Places of ``-c`` taken: forked children and workers, idle or not."""
        return len(self.children) + (len(self.pool.workers) if self.pool is not None else 0)

    # setup
    def bind(self) -> None:
        o = self.o
        if self.unix_path:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(self.unix_path) and stat.S_ISSOCK(
                    os.lstat(self.unix_path).st_mode
                ):
                    os.unlink(self.unix_path)
                s.bind(self.unix_path)
                s.listen(o.backlog)
            except OSError as exc:
                raise Fatal(
                    EXIT_TEMP, f"fatal: unable to bind to {self.unix_path}: {exc.strerror}"
                ) from None
            self.sock = s
            return
        port_text = self.port_text or ""
        port = addr.port_number(port_text)
        if port is None:
            raise Fatal(EXIT_TEMP, f"fatal: unable to figure out port number for {port_text}")
        host = self.host or "0"
        if host in ("0", "::"):
            if o.noipv6 and host == "0":
                family, bindaddr = socket.AF_INET, "0.0.0.0"
            else:
                family, bindaddr = socket.AF_INET6, "::"
        else:
            ip16 = addr.parse(host)
            if ip16 is None:
                try:
                    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
                except OSError:
                    raise Fatal(
                        EXIT_TEMP, f"fatal: temporarily unable to figure out IP address for {host}"
                    ) from None
                if not infos:
                    raise Fatal(EXIT_TEMP, f"fatal: no IP address for {host}")
                ip16 = addr.parse(infos[0][4][0])
                assert ip16 is not None
            if addr.is_v4mapped(ip16):
                o.noipv6 = True
                family, bindaddr = socket.AF_INET, addr.ip4_fmt(ip16[12:])
            else:
                family, bindaddr = socket.AF_INET6, addr.ip6_fmt(ip16)
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            if family == socket.AF_INET6 and bindaddr == "::":
                family, bindaddr = socket.AF_INET, "0.0.0.0"
                o.noipv6 = True
                s = socket.socket(family, socket.SOCK_STREAM)
            else:
                raise Fatal(EXIT_TEMP, "fatal: unable to create socket") from None
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and bindaddr == "::":
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((bindaddr, port))
            s.listen(o.backlog)
        except OSError as exc:
            s.close()
            raise Fatal(EXIT_TEMP, f"fatal: unable to bind: {exc.strerror}") from None
        self.localport = s.getsockname()[1]
        self.sock = s

    def drop_privileges(self) -> None:
        o = self.o
        try:
            if o.user:
                from indimail.daemontools import privs

                privs.become(o.user, supplementary=True, extra_groups=o.groups)
                return
            if o.groups and o.gid is None:
                import grp

                gids = [int(g) if g.isdecimal() else grp.getgrnam(g).gr_gid for g in o.groups]
                if os.getgroups() != gids and os.geteuid() == 0:
                    os.setgroups(gids)
            if o.gid is not None and os.getegid() != o.gid:
                os.setgroups([o.gid])
                os.setgid(o.gid)
            if o.uid is not None and os.geteuid() != o.uid:
                os.setuid(o.uid)
        except (OSError, KeyError) as exc:
            raise Fatal(EXIT_TEMP, f"fatal: unable to set uid/gid: {exc}") from None

    def check_pidfile(self) -> None:
        path = self.o.pidfile
        if not path:
            return
        try:
            with open(path, "rb") as f:
                old = f.read(32).strip()
            if old.isdigit():
                try:
                    os.kill(int(old), 0)
                    raise Fatal(EXIT_TEMP, "fatal: already running")
                except ProcessLookupError:
                    pass
                except PermissionError:
                    raise Fatal(EXIT_TEMP, "fatal: already running") from None
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"fatal: couldn't read {path}: {exc.strerror}") from None
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            raise Fatal(
                EXIT_TEMP, f"fatal: couldn't open {path} for write: {exc.strerror}"
            ) from None

    def prepare(self) -> None:
        o = self.o
        if o.ssl:
            self.tls_ctx = make_tls_context(o)
        self.ours = inproc.command_name(self.argv[0])
        if self.ours is not None:
            inproc.warm(self.argv)
            try:
                mod = inproc.command_module(self.ours)
                self.ours_tls_aware = bool(getattr(mod, "UCSPI_TLS_AWARE", False))
                poolable = _poolable_chain(self.argv)
            except Exception:
                self.ours_tls_aware = poolable = False
            relayed = o.ssl and not self.ours_tls_aware  # needs a relay fork anyway
            self.pool_wanted = poolable and not relayed
        if not self.unix_path and (o.remotehost or o.localhost is None):
            try:
                from indimail.deliver import dns as rdns

                env = dict(os.environ)
                env.setdefault("DNSTIMEOUT", "10")
                self.resolver = rdns.make_resolver(env)
                import dns.reversename  # noqa: F401  (warm)
            except Exception:
                self.resolver = None
        # what is imported now stays shared with every child: the collector
        # must not write into those objects' pages in the parent or a child
        import gc

        gc.collect()
        gc.freeze()

    # signals
    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.add(signum)

    def handle_signals(self) -> None:
        while self.pending:
            sig = self.pending.pop()
            if sig == signal.SIGTERM:
                self.status("shutdown", os.getpid())
                if self.unix_path:
                    try:
                        os.unlink(self.unix_path)
                    except OSError:
                        pass
                sys.stderr.flush()
                os._exit(0)
            elif sig == signal.SIGHUP:
                if self.o.limitfile:
                    try:
                        self.o.limit = read_limit(self.o.limitfile, self.o.limit)
                    except Fatal as exc:
                        self.warn(f"tcpserver: {exc.message}")
                if self.pool is not None:
                    self.pool.trim(max(0, self.o.limit - len(self.children)))
                self.warn(f"tcpserver: sighup: {self.active()}/{self.o.limit}")
            elif sig == signal.SIGUSR1 and self.o.verbosity >= 2:
                for n, (pid, ip16) in enumerate(self.sessions()):
                    self.warn(f"tcpserver: {n}: IP {self.ip_text(ip16)}: PID {pid}")

    def sessions(self) -> list[tuple[int, bytes]]:
        """(pid, client address) of every session being served."""
        if self.pool is None:
            return list(self.children.items())
        holder = {w.slot: w.pid for w in self.pool.workers.values()}
        holder.update((slot, pid) for pid, slot in self.child_slots.items())
        return [(holder[slot], ip16) for slot, ip16 in self.pool.table.busy() if slot in holder]

    def reap(self) -> None:
        while self.children or self.pool is not None:  # retired workers too
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            serving = False  # a worker that ended in a session
            if self.pool is not None:
                w = self.pool.workers.get(pid)
                if w is not None:
                    serving = self.pool.table.is_busy(w.slot)
                    self.pool.forget(pid)
                    if not serving:
                        continue  # it retired (and logged its sessions itself)
                slot = self.child_slots.pop(pid, None)
                if slot is not None:
                    self.pool.table.release(slot)
            if pid not in self.children and not serving:
                continue
            self.children.pop(pid, None)
            if os.WIFSIGNALED(wstat):
                self.log_end(pid, f"killed by signal {os.WTERMSIG(wstat)}")
            else:
                self.log_end(pid, os.WEXITSTATUS(wstat) if os.WIFEXITED(wstat) else 0)

    def log_end(self, pid: int, how: int | str) -> None:
        """The lines of a session that ended (a forked child's, or a pooled
        worker's own): ``end PID status N`` when not 0, or how it was
        killed, then the status line with the sessions left."""
        if how and self.o.verbosity >= 2:
            detail = how if isinstance(how, str) else f"status {how}"
            self.warn(f"tcpserver: end {pid} {detail}")
        self.status("sigchild", pid)

    def ip_text(self, ip16: bytes) -> str:
        o = self.o
        if self.unix_path:
            return "0.0.0.0"
        if not o.forcev6 and addr.is_v4mapped(ip16):
            return addr.ip4_fmt(ip16[12:])
        return addr.ip6_fmt(ip16)

    # main loop
    def serve(self) -> None:
        assert self.sock is not None
        o = self.o
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.wakeup = (rfd, wfd)
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ)
        if self.pool_wanted:
            self.pool_settings = pool.Settings(os.environ)
            if self.pool_settings.enabled:
                # a slot for every place -c allows now, and room to raise it
                table = pool.Table(max(4 * o.limit, pool.DEFAULT_MAX, 1024))
                self.pool = pool.Pool(self.pool_settings, sel, table)
        listening = False
        self.status("startup", os.getpid())
        while True:
            self.handle_signals()
            self.reap()
            # with the pool, an idle worker takes the next client itself
            want = self.places() < o.limit and (self.pool is None or not self.pool.idle())
            if want and not listening:
                sel.register(self.sock, selectors.EVENT_READ)
                listening = True
            elif not want and listening:
                sel.unregister(self.sock)
                listening = False
            for key, _ in sel.select(timeout=5.0):
                if key.fd == rfd:
                    try:
                        while os.read(rfd, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                elif isinstance(key.data, pool.Worker):
                    if self.pool is not None and self.pool.heard(key.data):
                        self.more_workers()
                elif self.pool is None or not self.more_workers():
                    self.accept_some()

    def more_workers(self) -> bool:
        """Fork a worker if none is idle and -c and the pool allow one:
        True if a worker is idle now (it accepts the waiting client)."""
        assert self.pool is not None
        if self.pool.idle():
            return True
        if len(self.pool.workers) >= self.pool.maxworkers or self.places() >= self.o.limit:
            return False
        return self.pool.spawn(self.worker_main) is not None

    def accept_some(self) -> None:
        assert self.sock is not None
        for _ in range(ACCEPT_BURST):
            if self.places() >= self.o.limit or self.pending:
                return
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.warn(f"tcpserver: warning: unable to accept: {exc.strerror}")
                    time.sleep(0.1)
                return
            self.start(conn, peer)

    def peer_of(self, peer: object) -> tuple[bytes, int]:
        """(16-byte address, port) of what accept() returned."""
        if self.unix_path:
            return b"unix".ljust(16, b"\0"), 0
        return _peer_ip16(peer[0]), peer[1]  # type: ignore[index]

    def clients(self, ip16: bytes, besides: int = -1) -> int:
        """Sessions being served for ``ip16`` (``-C``)."""
        if self.table is not None:
            return self.table.clients(ip16, besides)
        return sum(1 for v in self.children.values() if v == ip16)

    def over_perhost(self, ip16: bytes, ipcount: int) -> bool:
        if self.o.perhostlimit and ipcount >= self.o.perhostlimit:
            self.warn(f"tcpserver: end {self.ip_text(ip16)} perIPlimit {ipcount}")
            return True
        return False

    def start(self, conn: socket.socket, peer: object) -> None:
        """Serve ``conn`` in a forked child of its own."""
        ip16, rport = self.peer_of(peer)
        ipcount = self.clients(ip16)
        if self.over_perhost(ip16, ipcount):
            conn.close()
            return
        table = self.table
        slot = table.claim(pool.BUSY, ip16) if table is not None else None
        try:
            pid = os.fork()
        except OSError as exc:
            if slot is not None and table is not None:
                table.release(slot)
            self.warn(f"{DROP}unable to fork: {exc.strerror}")
            conn.close()
            self.status("Failure", os.getpid())
            return
        if pid == 0:
            code = EXIT_TEMP
            try:
                code = self.session(conn, ip16, rport, ipcount, pooled=False)[0]
            finally:
                exit_child(code)
        self.children[pid] = ip16
        if slot is not None:
            self.child_slots[pid] = slot
        conn.close()

    def session(
        self, conn: socket.socket, ip16: bytes, rport: int, ipcount: int, pooled: bool
    ) -> tuple[int, bool]:
        """Serve one connection (in a forked child or a pool worker):
        (exit code, False if something unexpected happened)."""
        try:
            return Child(self, conn, ip16, rport, ipcount).run(pooled=pooled), True
        except Fatal as exc:
            self.warn(f"{DROP}{exc.message}")
            return exc.code, True
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else EXIT_TEMP), True
        except BaseException as exc:
            self.warn(f"{DROP}internal error: {type(exc).__name__}: {exc}")
            return EXIT_TEMP, False

    # the worker pool (ucspi/pool.py)
    def worker_main(self, chan: socket.socket, slot: int) -> None:
        """A pooled worker: accept and serve clients until EOF from the
        listener, retirement or doubt; log what the listener logs for a
        forked child."""
        table = self.table
        assert table is not None and self.sock is not None
        settings = self.pool_settings
        lsock, self.sock = self.sock, None  # ours now, not the listener's
        try:
            Child.reset_parent_state_of(self, None)
            try:  # built once, not again by every session
                from indimail.core import paths

                paths.get()
                paths.places()
            except Exception:
                pass  # the command reports a bad paths file itself
            waiter = pool.Waiter(lsock, chan)
            base = pool.Baseline(settings.maxmem_kb)
            pid = os.getpid()
            uses = 0
            while True:
                # a new worker waits for the client it was forked for
                client, listener = waiter.wait(settings.idle if uses else max(settings.idle, 1.0))
                if not client:
                    break  # idle too long, or the listener closed our channel
                try:
                    conn, peer = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another worker was quicker
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.warn(f"tcpserver: warning: unable to accept: {exc.strerror}")
                        time.sleep(0.1)
                        continue
                    break
                ip16, rport = self.peer_of(peer)
                table.set(slot, pool.BUSY, ip16)
                if not table.count(pool.IDLE):
                    pool.need(chan)
                ipcount = table.clients(ip16, besides=slot)
                if self.over_perhost(ip16, ipcount):
                    conn.close()
                    table.set(slot, pool.IDLE)
                    continue
                code, stays = self.session(conn, ip16, rport, ipcount, pooled=True)
                try:
                    conn.close()
                except OSError:
                    pass
                del conn
                uses += 1
                stays = base.restore() and stays and uses < settings.maxuse
                table.set(slot, pool.IDLE)
                self.log_end(pid, code)
                if (
                    not stays
                    or listener
                    or not settings.idle
                    or table.count(pool.IDLE) > settings.maxidle
                ):
                    break
        except BaseException as exc:
            self.warn(f"tcpserver: warning: pool worker: {type(exc).__name__}: {exc}")
        table.set(slot, pool.FREE)
        exit_child(0)


def _poolable_chain(argv: list[str], depth: int = 0) -> bool:
    """Whether a pooled worker may run ``argv``: every program of the chain
    is ours and says ``UCSPI_POOL``.  A program that runs another one after
    it (rblsmtpd) names it with ``ucspi_next(argv)``; an exec in a worker
    would take the worker's place, so anything not ours ends pooling."""
    name = inproc.command_name(argv[0]) if argv else None
    if name is None or depth > 8:
        return False
    mod = inproc.command_module(name)
    if not getattr(mod, "UCSPI_POOL", False):
        return False
    following = getattr(mod, "ucspi_next", None)
    if following is None:
        return True
    rest = following(argv)
    return rest is not None and _poolable_chain(rest, depth + 1)


_FSENC = sys.getfilesystemencoding()


class Child:
    """The work of one connection in the forked child."""

    def __init__(
        self, server: Server, conn: socket.socket, ip16: bytes, rport: int, ipcount: int
    ) -> None:
        self.s = server
        self.o = server.o
        self.conn = conn
        self.ip16 = ip16
        self.rport = rport
        self.ipcount = ipcount
        self.maxperip = server.o.maxperip
        self.remoteipstr = ""

    def setenv(self, name: str, value: str | None) -> None:
        if name == "MAXPERIP" and value is not None:
            digits = "".join(c for c in value[:20] if c.isdecimal())
            self.maxperip = int(digits) if value[:1].isdecimal() and digits else 0
        # what os.environ[name] = value does, without its per-call Python
        # layers (about a dozen variables per connection); the mapping is
        # the one the pool's reset mends (pool.environ_data)
        data = pool.environ_data()
        key = name.encode(_FSENC, "surrogateescape")
        if value is None:
            if key in data:
                os.unsetenv(key)
                del data[key]
            return
        raw = value.encode(_FSENC, "surrogateescape")
        os.putenv(key, raw)
        data[key] = raw

    @staticmethod
    def reset_parent_state_of(s: Server, conn: socket.socket | None) -> None:
        """Drop what belongs to the listener (after the fork of a child or worker)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        for fd in s.wakeup:
            os.close(fd)
        if s.sock is not None:
            s.sock.close()
        if conn is not None:
            conn.setblocking(True)

    def ptr(self, ip16: bytes) -> str | None:
        res = self.s.resolver
        if res is None:
            return None
        import dns.exception
        import dns.reversename

        text = addr.ip4_fmt(ip16[12:]) if addr.is_v4mapped(ip16) else addr.ip6_fmt(ip16)
        try:
            ans = res.resolve(dns.reversename.from_address(text), "PTR", search=False)
        except (dns.exception.DNSException, OSError, ValueError):
            return None
        for rr in ans:
            return rr.target.to_text(omit_final_dot=True)
        return None

    def forward_has(self, name: str, ip16: bytes) -> bool:
        res = self.s.resolver
        if res is None:
            return False
        import dns.exception

        for rdtype in ("A", "AAAA"):
            try:
                ans = res.resolve(name, rdtype, search=False)
            except (dns.exception.DNSException, OSError, ValueError):
                continue
            for rr in ans:
                if addr.parse(rr.address) == ip16:
                    return True
        return False

    def run(self, pooled: bool = False) -> int:
        if pooled:
            self.conn.setblocking(True)
        else:
            self.reset_parent_state_of(self.s, self.conn)
        if self.s.table is None:
            self.s.children[-1] = self.ip16  # the status lines count this connection
        if self.s.unix_path:
            self.doit_unix()
        elif self.doit_tcp():
            return 100  # denied by the rules
        if self.maxperip and self.ipcount >= self.maxperip:
            who = self.s.unix_path or self.remoteipstr
            what = "no slots for " if self.s.unix_path else "no ip slots for "
            raise Fatal(EXIT_TEMP, f"{what}{who}, perIPlimit {self.ipcount}: permission denied")
        if self.s.tls_ctx is not None:
            return self.run_tls()
        self.s.status("un-encrypted session", os.getpid(), self.remoteipstr or None)
        fd = self.conn.fileno()
        os.dup2(fd, 0)
        os.dup2(fd, 1)
        return self.run_program(context.Connection(self.conn), pooled)

    def run_program(self, conn: context.Connection | None, pooled: bool = False) -> int:
        argv = self.s.argv
        if self.s.ours is None:
            if conn is not None and conn.sock is not None:
                conn.sock.close()
            inproc.exec_program(argv, "tcpserver")
        context.set_current(conn)
        inproc.setup_stdio(lazy=pooled)
        if pooled:  # the listener resolved the program when it made the pool
            with control.session():  # absent control files: one stat per session
                return inproc.run_command(self.s.ours, argv)
        return inproc.run_or_exec(argv, "tcpserver")

    def banner(self) -> None:
        if self.o.banner:
            try:
                self.conn.sendall(self.o.banner.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                raise Fatal(EXIT_TEMP, f"unable to print banner: {exc.strerror}") from None

    def doit_unix(self) -> None:
        path = self.s.unix_path or ""
        self.remoteipstr = "0.0.0.0"
        pid = os.getpid()
        if self.o.verbosity >= 2:
            self.s.warn(f"tcpserver: pid {pid} from {path}")
        self.banner()
        self.setenv("PROTO", "UNIX")
        self.setenv("UNIXLOCALPATH", path)
        if self.o.verbosity >= 2:
            self.s.warn(f"tcpserver: ok {pid} [{safe(path)}]")

    def doit_tcp(self) -> bool:
        """Environment, rules, log lines of a TCP client; True if denied."""
        o = self.o
        pid = os.getpid()
        ip16 = self.ip16
        fakev4 = not o.forcev6 and addr.is_v4mapped(ip16)
        v4text = fakev4 or (o.noipv6 and not o.forcev6)
        self.remoteipstr = addr.ip4_fmt(ip16[12:]) if v4text else addr.ip6_fmt(ip16)
        remoteipstr6 = addr.ip6_fmt(ip16)
        if o.verbosity >= 2:
            self.s.warn(f"tcpserver: pid {pid} from {self.remoteipstr}")
        conn = self.conn
        if o.killopts and conn.family == socket.AF_INET:
            try:
                conn.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
            except OSError:
                pass
        if not o.delay:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.banner()
        try:
            local = conn.getsockname()
        except OSError as exc:
            raise Fatal(EXIT_TEMP, f"unable to get local address: {exc.strerror}") from None
        lip16 = _peer_ip16(local[0])
        localport = str(local[1])
        localipstr = addr.ip4_fmt(lip16[12:]) if v4text else addr.ip6_fmt(lip16)
        localipstr6 = addr.ip6_fmt(lip16)
        localhost = o.localhost if o.localhost is not None else self.ptr(lip16)
        remoteportstr = str(self.rport)
        self.setenv("PROTO", "TCP" if v4text else "TCP6")
        self.setenv("TCPLOCALIP", localipstr)
        self.setenv("TCPLOCALPORT", localport)
        self.setenv("TCPLOCALHOST", localhost)
        if not o.noipv6:
            self.setenv("TCP6LOCALIP", localipstr6)
            self.setenv("TCP6LOCALPORT", localport)
            self.setenv("TCP6LOCALHOST", localhost)
            if not fakev4 and len(local) >= 4 and local[3]:
                try:
                    self.setenv("TCP6INTERFACE", socket.if_indextoname(local[3]))
                except OSError:
                    pass
        remotehost = None
        if o.remotehost:
            name = self.ptr(ip16)
            if name:
                if o.paranoid and not self.forward_has(name, ip16):
                    self.setenv("TCPPARANOID", name)
                else:
                    remotehost = name
        self.setenv("TCPREMOTEIP", self.remoteipstr)
        self.setenv("TCPREMOTEPORT", remoteportstr)
        self.setenv("TCPREMOTEHOST", remotehost)
        if not o.noipv6:
            self.setenv("TCP6REMOTEIP", remoteipstr6)
            self.setenv("TCP6REMOTEPORT", remoteportstr)
            self.setenv("TCP6REMOTEHOST", remotehost)
        remoteinfo = None
        if o.remoteinfo:
            from indimail.ucspi.ident import remote_info

            lip = addr.ip4_fmt(lip16[12:]) if addr.is_v4mapped(lip16) else addr.ip6_fmt(lip16)
            rip = addr.ip4_fmt(ip16[12:]) if addr.is_v4mapped(ip16) else addr.ip6_fmt(ip16)
            if conn.family == socket.AF_INET6 and addr.is_v4mapped(ip16):
                lip, rip = "::ffff:" + lip, "::ffff:" + rip
            remoteinfo = remote_info(lip, int(localport), rip, self.rport, o.itimeout)
        self.setenv("TCPREMOTEINFO", remoteinfo)
        if not o.noipv6:
            self.setenv("TCP6REMOTEINFO", remoteinfo)
        deny = False
        if o.rules:
            rip = self.remoteipstr if v4text else remoteipstr6
            deny = self.follow_rules(rip, remotehost, remoteinfo)
        if o.verbosity >= 2:
            logip = localipstr if v4text else localipstr6
            rip = self.remoteipstr if v4text else remoteipstr6
            line = (
                f"tcpserver: {'deny' if deny else 'ok'} {pid} "
                f"{safe(localhost) if localhost else ''}[{safe(logip)}]{safe(localport)} "
                f"{safe(remotehost) if remotehost else ''}[{safe(rip)}]"
                f"{safe(remoteinfo) if remoteinfo is not None else ''}:{safe(remoteportstr)}"
                f":maxperip={self.maxperip}"
            )
            self.s.warn(line)
        return deny

    def follow_rules(self, ip: str, host: str | None, info: str | None) -> bool:
        from indimail.core import cdb

        cache = self.s.rules_cache()
        try:
            decision = cache.lookup(ip, host, info)
        except FileNotFoundError:
            if self.o.allow_norules:
                return False
            raise Fatal(EXIT_TEMP, f"unable to read {cache.path}: file does not exist") from None
        except (OSError, cdb.CdbError) as exc:
            raise Fatal(EXIT_TEMP, f"unable to read {cache.path}: {exc}") from None
        for name, value in decision.env:
            self.setenv(name, value)
        return decision.deny

    # TLS
    def handshake(self) -> ssl.SSLSocket:
        assert self.s.tls_ctx is not None
        self.conn.settimeout(self.o.ctimeout or None)
        try:
            tls = self.s.tls_ctx.wrap_socket(self.conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            raise Fatal(EXIT_TEMP, f"unable to accept SSL connection: {exc}") from None
        tls.settimeout(None)
        return tls

    def provider(self, tls: ssl.SSLSocket) -> tuple[str, str]:
        desc = tls_description(tls)
        return desc, "tcpserver, " + (desc if self.o.provide_data else "")

    def run_tls(self) -> int:
        if self.s.ours is not None and self.s.ours_tls_aware:
            tls = self.handshake()
            desc, prov = self.provider(tls)
            os.environ["TLS_PROVIDER"] = prov
            self.s.status("encrypted session", os.getpid(), self.remoteipstr, desc)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.close(null)
            return self.run_program(context.Connection(None, tls, desc))
        mine, theirs = socket.socketpair()
        info_r, info_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self.conn.close()
            mine.close()
            os.close(info_w)
            prov = self.read_provider(info_r)
            if prov is None:
                os._exit(EXIT_TEMP)
            os.environ["TLS_PROVIDER"] = prov
            fd = theirs.fileno()
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            theirs.close()
            return self.run_program(context.Connection(None, None, prov, relayed=True))
        theirs.close()
        os.close(info_r)
        try:
            tls = self.handshake()
        except Fatal:
            os.close(info_w)
            mine.close()
            self._wait(pid, 5)
            raise
        desc, prov = self.provider(tls)
        try:
            os.write(info_w, prov.encode("utf-8", "surrogateescape") + b"\n")
        except OSError:
            pass
        os.close(info_w)
        self.s.status("encrypted session", os.getpid(), self.remoteipstr, desc, pid)
        try:
            relay(tls, mine, float(self.o.dtimeout or 300))
        finally:
            try:
                tls.close()
            except OSError:
                pass
            mine.close()
        return self._wait(pid, 10)

    def read_provider(self, fd: int) -> str | None:
        buf = bytearray()
        deadline = time.monotonic() + self.o.ctimeout + 5
        while b"\n" not in buf and len(buf) < 4096:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            data = os.read(fd, 4096)
            if not data:
                return None
            buf += data
        os.close(fd)
        return bytes(buf).split(b"\n", 1)[0].decode("utf-8", "surrogateescape")

    def _wait(self, pid: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while True:
            try:
                got, wstat = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 0
            if got:
                if os.WIFEXITED(wstat):
                    return os.WEXITSTATUS(wstat)
                return EXIT_TEMP
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.02)


def _peer_ip16(host: str) -> bytes:
    """16 bytes of an address accept() gave (inet_pton: no ipaddress objects)."""
    try:
        if ":" in host:
            return socket.inet_pton(socket.AF_INET6, host)
        return addr.V4MAPPED + socket.inet_pton(socket.AF_INET, host)
    except OSError:  # a scope id (fe80::1%eth0) and the like
        return addr.parse(host) or b"\0" * 16


def main(argv: list[str]) -> int:
    o, rest = parse_options(argv)
    if not rest:
        raise UsageError(USAGE)
    host = rest.pop(0)
    if host == "":
        host = "0"
    port = None
    if not host.startswith("/"):
        if not rest:
            raise UsageError(USAGE)
        port = rest.pop(0)
    if not rest:
        raise UsageError(USAGE)
    server = Server(o, host, port, rest)
    server.check_pidfile()
    server.bind()
    server.drop_privileges()
    server.prepare()
    if o.print_port and not server.unix_path:
        try:
            os.write(1, f"{server.localport}\n".encode())
        except OSError:
            pass
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if null > 2:
        os.close(null)
    server.serve()
    return 0
