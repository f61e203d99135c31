"""Recipient classification of qmail-send: local or remote, and rewriting.

Order as the original: add ``@envnoathost`` when there is no ``@``; undo
the percent hack for ``percenthack`` domains; a domain in ``locals`` is
local; otherwise ``virtualdomains`` is searched for the full address, the
domain, each ``.suffix`` of the domain, then the empty key.  A non-empty
value ``prefix`` makes the address local as ``prefix-<address>``; an empty
value is an exception (not virtual).  Everything else is remote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indimail.core import control

LOCAL = "L"
REMOTE = "R"


@dataclass
class Rewriter:
    """The control files qmail-send rereads on HUP."""

    envnoathost: bytes = b"envnoathost"
    locals: set[bytes] = field(default_factory=set)
    percenthack: set[bytes] = field(default_factory=set)
    virtualdomains: dict[bytes, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, controldir: Path) -> Rewriter:
        def enc(s: str) -> bytes:
            return s.encode("utf-8", "surrogateescape")

        me = control.read_line("me", controldir=controldir) or "me"
        envnoathost = control.read_line("envnoathost", controldir=controldir) or me
        locals_ = control.read_list("locals", controldir=controldir, flagme=True) or []
        percent = control.read_list("percenthack", controldir=controldir) or []
        vdoms: dict[bytes, bytes] = {}
        for line in control.read_list("virtualdomains", controldir=controldir) or []:
            key, sep, value = line.partition(":")
            if not sep:
                continue  # the original ignores lines without a colon
            vdoms[enc(key.lower())] = enc(value)
        return cls(
            envnoathost=enc(envnoathost),
            locals={enc(d.lower()) for d in locals_},
            percenthack={enc(d.lower()) for d in percent},
            virtualdomains=vdoms,
        )

    def classify(self, addr: bytes) -> tuple[str, bytes]:
        """(``L`` or ``R``, rewritten address) for recipient ``addr``."""
        if b"@" not in addr:
            addr = addr + b"@" + self.envnoathost
        at = addr.rfind(b"@")
        while addr[at + 1 :].lower() in self.percenthack:
            local = addr[:at]
            pct = local.rfind(b"%")
            if pct == -1:
                break
            addr = local[:pct] + b"@" + local[pct + 1 :]
            at = addr.rfind(b"@")
        domain = addr[at + 1 :].lower()
        if domain in self.locals:
            return LOCAL, addr
        lower = addr.lower()
        for key in self._vdom_keys(lower, at):
            prefix = self.virtualdomains.get(key)
            if prefix is None:
                continue
            if not prefix:
                break
            return LOCAL, prefix + b"-" + addr
        return REMOTE, addr

    @staticmethod
    def _vdom_keys(lower: bytes, at: int) -> list[bytes]:
        keys = [lower, lower[at + 1 :]]
        for i in range(at + 1, len(lower)):
            if lower[i : i + 1] == b".":
                keys.append(lower[i:])
        keys.append(b"")
        return keys
