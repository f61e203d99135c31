"""Entry script of the frozen multicall binary (see freeze.py).

Every name in ``indimail.cli.COMMANDS`` is a symlink to the one binary;
``indimail.cli.main`` picks the command from ``basename(argv[0])``.  First
the bootloader's ``LD_LIBRARY_PATH`` and ``_PYI_*`` variables go, so the
programs a command starts see the environment it was started with
(``indimail.core.frozen``).
"""

import os
import sys

if getattr(sys, "frozen", False):
    from indimail.core.frozen import restore_environment

    restore_environment(os.environ, sys._MEIPASS)

from indimail.cli import main

if __name__ == "__main__":
    sys.exit(main())
