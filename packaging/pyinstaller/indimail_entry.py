"""Entry script of the frozen multicall binary (see freeze.py).

Every name in ``indimail.cli.COMMANDS`` is a symlink to the one binary;
``indimail.cli.main`` picks the command from ``basename(argv[0])``.
"""

import sys

from indimail.cli import main

if __name__ == "__main__":
    sys.exit(main())
