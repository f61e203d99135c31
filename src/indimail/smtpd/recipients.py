"""The recipients extension of qmail-smtpd: does this local address exist?

Control file ``recipients`` (CONTROLDIR) lists where valid addresses live,
one source per line, consulted in order until one knows the address (the
original's ``recipients.c``, Erwin Hoffmann's RECIPIENTS extension)::

    !nocheck.com                       recipients of nocheck.com: not checked
    @mydomain.com:users/recipients.cdb exactly mydomain.com: look up the cdb
    example.com:users/example.cdb      example.com and *.example.com
    example.com|ldap_pam host port     ask a PAVM program (checkpassword style)
    *:control/fastforward.cdb          every domain
    users/recipients.cdb               legacy line: a cdb for every domain
    !*                                 pass-thru: accept what is not known yet

* A cdb holds the keys ``:`` + lower-cased address (what ``qmail-cdb -r``
  and fastforward's ``setforward`` write); data is ignored.
* A PAVM program gets ``address\\0\\0\\0`` on fd 3 and exits 0 when the
  address exists (111 = temporary trouble, anything else = unknown).
* Relative paths are relative to SYSCONFDIR (the original's working
  directory).
* Unqualified addresses are looked up as ``local@localhost``; for an
  address with a ``-``, ``=`` or ``+`` in the local part, the form up to
  and including the first of them (``user-@domain``) is tried too (VERP,
  SRS, sub-addresses).

:meth:`Recipients.lookup` returns the original's codes: 0 not found,
1 found in a cdb, 2 found by a PAVM, 3 domain excluded with ``!domain``,
4 pass-thru ``!*``.  Trouble (a listed cdb missing or unreadable, a PAVM
that cannot run, crashes, times out or exits 111) raises
:class:`RecipientsTrouble`: qmail-smtpd answers 451, never a 550, so no
mail is refused because of a local problem.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from indimail.core import cdb, control
from indimail.core.fdpass import payload_pipe
from indimail.core.record import Record

NOT_FOUND = 0
FOUND_CDB = 1
FOUND_PAVM = 2
NOT_CHECKED = 3
PASS_THRU = 4

BREAK_CHARS = b"-=+"  # auto_break ('-') plus the SRS/sub-address delimiters
PAVM_TIMEOUT = 60.0


class RecipientsTrouble(Exception):
    """The lookup could not be done (reply 451, log the reason)."""


class Source(Record):
    """One line of ``recipients``."""

    _fields = ("line", "kind", "domain", "exact", "target")
    __slots__ = _fields

    def __init__(self, line: str, kind: str, domain: str | None, exact: bool, target: str):
        self._set("line", line)
        self._set("kind", kind)  # "skip", "passthru", "cdb", "pavm"
        self._set("domain", domain)  # None = every domain ("*" or a legacy line)
        self._set("exact", exact)  # "@domain": that domain only; else also its subdomains
        self._set("target", target)  # cdb path or PAVM command line

    def applies(self, domain: str) -> bool:
        if self.domain is None:
            return True
        if domain == self.domain:
            return True
        return not self.exact and domain.endswith("." + self.domain)


def parse_line(line: str) -> Source:
    """One ``recipients`` line; the first ``:`` or ``|`` ends the domain part."""
    if line.startswith("!"):
        if line.startswith("!*"):
            return Source(line, "passthru", None, False, "")
        return Source(line, "skip", line[1:].lower(), True, "")
    cut = [i for i in (line.find(":"), line.find("|")) if i >= 0]
    if not cut:
        return Source(line, "cdb", None, False, line)
    i = min(cut)
    kind = "cdb" if line[i] == ":" else "pavm"
    spec, target = line[:i].lower(), line[i + 1 :]
    if spec == "*":
        return Source(line, kind, None, False, target)
    if spec.startswith("@"):
        return Source(line, kind, spec[1:], True, target)
    return Source(line, kind, spec, False, target)


def keys_for(address: bytes) -> tuple[bytes, bytes, bytes | None]:
    """``(address, domain, verp)``: the address qualified with ``@localhost``
    when it has no ``@``, its domain, and the VERP form (None if none)."""
    at = address.rfind(b"@")
    if at >= 0:
        domain = address[at + 1 :]
        local = address[:at]
        full = address
    else:
        domain = b"localhost"
        local = address
        full = address + b"@localhost"
    verp = None
    for i, ch in enumerate(local):
        if ch in BREAK_CHARS:
            verp = local[: i + 1] + b"@" + domain
            break
    return full, domain, verp


class Recipients:
    """The ``recipients`` control file, read once per session."""

    def __init__(
        self, controldir: Path, sysconfdir: Path, environ: Mapping[str, str] | None = None
    ) -> None:
        self.controldir = controldir
        self.sysconfdir = sysconfdir
        self.environ = dict(os.environ if environ is None else environ)
        try:
            lines = control.read_list("recipients", controldir=controldir)
        except control.ControlError as exc:
            raise RecipientsTrouble(exc.message) from None
        self.present = lines is not None
        self.sources = [parse_line(x) for x in lines or []]

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.sysconfdir / p

    def _cdb_has(self, name: str, keys: list[bytes]) -> bool:
        path = self._path(name)
        try:
            reader = cdb.Reader(path)
        except FileNotFoundError:
            raise RecipientsTrouble(f"recipients: {path}: no such file") from None
        except OSError as exc:
            raise RecipientsTrouble(f"recipients: {path}: {exc.strerror}") from None
        except cdb.CdbError as exc:
            raise RecipientsTrouble(f"recipients: {path}: {exc}") from None
        with reader:
            try:
                return any(reader.get(k) is not None for k in keys)
            except cdb.CdbError as exc:
                raise RecipientsTrouble(f"recipients: {path}: {exc}") from None

    def lookup(self, address: bytes) -> int:
        """The original's ``recipients()`` result for ``address`` (see module doc)."""
        if not self.present:
            raise RecipientsTrouble("control file recipients is missing (needed by CHECKRECIPIENT)")
        full, domain_b, verp = keys_for(address)
        domain = domain_b.decode("utf-8", "surrogateescape").lower()
        keys = [b":" + full.lower()]
        addrs = [full]
        if verp is not None:
            keys.append(b":" + verp.lower())
            addrs.append(verp)
        for src in self.sources:
            if src.kind == "skip":
                if src.domain == domain:
                    return NOT_CHECKED
                continue
            if src.kind == "passthru":
                return PASS_THRU
            if not src.applies(domain):
                continue
            if src.kind == "cdb":
                if self._cdb_has(src.target, keys):
                    return FOUND_CDB
            elif any(self.pavm(src.target, a) for a in addrs):
                return FOUND_PAVM
        return NOT_FOUND

    def pavm(self, command: str, address: bytes) -> bool:
        """Run a pluggable address verification module; True = address exists."""
        argv = command.split()
        if not argv:
            raise RecipientsTrouble(f"recipients: empty PAVM command in {command!r}")
        if "/" in argv[0] and not argv[0].startswith("/"):
            argv[0] = str(self.sysconfdir / argv[0])
        payload = address + b"\0\0\0"
        r = payload_pipe(payload)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, null, 1),
                (os.POSIX_SPAWN_DUP2, r, 3),
            ]
            try:
                pid = os.posix_spawnp(argv[0], argv, self.environ, file_actions=actions)
            except OSError as exc:
                raise RecipientsTrouble(
                    f"recipients: unable to run {argv[0]}: {exc.strerror}"
                ) from None
        finally:
            os.close(r)
            os.close(null)
        status = _wait(pid, PAVM_TIMEOUT)
        if status is None:
            raise RecipientsTrouble(f"recipients: {argv[0]} timed out")
        if os.WIFSIGNALED(status):
            raise RecipientsTrouble(f"recipients: {argv[0]} crashed")
        code = os.waitstatus_to_exitcode(status)
        if code == 111:
            raise RecipientsTrouble(f"recipients: {argv[0]} exited 111 (temporary failure)")
        return code == 0


def _wait(pid: int, timeout: float) -> int | None:
    """waitpid with a deadline; the child is killed and reaped on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    for _ in range(1_000_000):  # bounded by the deadline
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    return None
