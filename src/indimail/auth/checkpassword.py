"""Run a checkpassword chain as qmail-smtpd does for SMTP AUTH.

The program gets on fd 3 ``user\\0secret\\0response\\0`` followed by the
method number and a NUL (the original's ``authmethods.h`` numbers); for
LOGIN/PLAIN ``secret`` is the password and ``response`` empty, for CRAM-*
``secret`` is the challenge and ``response`` the client's hex digest.  The
chain (``prog args... /bin/false``) is exec'd as one argv: each program runs
the next itself when it cannot decide.  Exit 0 = authenticated (may relay),
3 = authenticated without relay rights, 111 = temporary failure, 1/2 = wrong
credentials, anything else = trouble.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

from indimail.core.fdpass import payload_pipe

AUTH_LOGIN = 1
AUTH_PLAIN = 2
AUTH_CRAM_MD5 = 3
AUTH_CRAM_SHA1 = 4
AUTH_CRAM_SHA224 = 5
AUTH_CRAM_SHA256 = 6
AUTH_CRAM_SHA384 = 7
AUTH_CRAM_SHA512 = 8
AUTH_CRAM_RIPEMD = 9
AUTH_DIGEST_MD5 = 10

METHOD_NAMES = {
    AUTH_LOGIN: "LOGIN",
    AUTH_PLAIN: "PLAIN",
    AUTH_CRAM_MD5: "CRAM-MD5",
    AUTH_CRAM_SHA1: "CRAM-SHA1",
    AUTH_CRAM_SHA224: "CRAM-SHA224",
    AUTH_CRAM_SHA256: "CRAM-SHA256",
    AUTH_CRAM_SHA384: "CRAM-SHA384",
    AUTH_CRAM_SHA512: "CRAM-SHA512",
    AUTH_CRAM_RIPEMD: "CRAM-RIPEMD",
    AUTH_DIGEST_MD5: "DIGEST-MD5",
}

# hashlib names for the CRAM variants (the digest is hex HMAC(password, challenge))
CRAM_HASH = {
    AUTH_CRAM_MD5: "md5",
    AUTH_CRAM_SHA1: "sha1",
    AUTH_CRAM_SHA224: "sha224",
    AUTH_CRAM_SHA256: "sha256",
    AUTH_CRAM_SHA384: "sha384",
    AUTH_CRAM_SHA512: "sha512",
    AUTH_CRAM_RIPEMD: "ripemd160",
}

MAX_OUTPUT = 4096


class CheckpasswordError(Exception):
    """The program could not be started, or died of a signal."""


def cram_digest(method: int, challenge: bytes, password: bytes) -> str:
    """The hex digest a client answers a CRAM-* challenge with."""
    import hmac

    return hmac.new(password, challenge, CRAM_HASH[method]).hexdigest()


def run(
    argv: Sequence[str],
    user: bytes,
    secret: bytes,
    response: bytes,
    method: int,
    environ: Mapping[str, str],
) -> tuple[int, bytes]:
    """Run the chain; return (exit code, what it wrote on stdout, bounded)."""
    payload = user + b"\0" + secret + b"\0" + response + b"\0" + bytes([method]) + b"\0"
    r = payload_pipe(payload)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, null, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, r, 3),
        ]
        try:
            pid = os.posix_spawnp(argv[0], list(argv), dict(environ), file_actions=actions)
        except OSError as exc:
            raise CheckpasswordError(f"unable to run {argv[0]}: {exc.strerror}") from None
    finally:
        os.close(r)
        os.close(null)
    try:
        payload = b"\0" * len(payload)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        text = out.read(MAX_OUTPUT)
    finally:
        out.close()
    if os.WIFSIGNALED(status):
        raise CheckpasswordError(f"{argv[0]} crashed")
    return os.waitstatus_to_exitcode(status), text
