"""Hand a small block of bytes to a child program on a descriptor (fd 3 for
checkpassword and recipients PAVM programs), the way the original does."""

from __future__ import annotations

import os


def payload_pipe(payload: bytes) -> int:
    """The read end of a pipe already holding ``payload`` (write end closed).

    The payload must fit the pipe buffer (a few hundred bytes here): it is
    written before the child runs.  The fd is never 3, since dup2(3, 3)
    would leave close-on-exec set on the child's fd 3.
    """
    r, w = os.pipe()
    try:
        os.write(w, payload)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    if r == 3:
        r2 = os.dup(r)
        os.close(r)
        r = r2
    return r
