import sys

from indimail.cli import main

sys.exit(main())
