"""Take back what the frozen binary's bootloader put into the environment.

On Linux and the other Unix systems the PyInstaller bootloader puts its
library directory first in ``LD_LIBRARY_PATH`` (keeping a value it found in
``LD_LIBRARY_PATH_ORIG``) and hands its state to its own restarted image in
``_PYI_*`` variables.  Left in place, both reach every program a command
starts:

* a shell, a ``.qmail`` ``|program``, a checkpassword or ``QMAILQUEUE``
  program would load our bundled libraries (libssl, libz, ...) before the
  system's;
* one of our own commands started from another (svscan's ``run`` script
  exec'ing tcpserver, envdir exec'ing multilog) took the parent's name from
  ``_PYI_LINUX_PROCESS_NAME``: ``ps``, ``top``, ``pgrep tcpserver`` and
  ``killall tcpserver`` saw ``svscan`` instead.

The process itself no longer needs any of them once Python runs: the
dynamic loader read ``LD_LIBRARY_PATH`` when the process started.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing/collections import on every start
if TYPE_CHECKING:
    from collections.abc import MutableMapping

PYI_VARIABLES = (
    "_PYI_ARCHIVE_FILE",
    "_PYI_APPLICATION_HOME_DIR",
    "_PYI_PARENT_PROCESS_LEVEL",
    "_PYI_LINUX_PROCESS_NAME",
    "_PYI_SPLASH_IPC",
)


def restore_environment(environ: MutableMapping[str, str], libdir: str) -> None:
    """Drop the bootloader's variables from ``environ``; put back the
    ``LD_LIBRARY_PATH`` the process was started with, when the bootloader
    prepended ``libdir`` (the bundle's library directory) to it."""
    for name in PYI_VARIABLES:
        environ.pop(name, None)
    current = environ.get("LD_LIBRARY_PATH")
    if current is None or current.split(":", 1)[0] != libdir:
        return  # not the bootloader's doing: leave it
    orig = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is None:
        del environ["LD_LIBRARY_PATH"]
    else:
        environ["LD_LIBRARY_PATH"] = orig
