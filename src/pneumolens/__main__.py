"""``python -m pneumolens``: the same command line as the ``pneumolens`` script."""

import sys

from pneumolens.cli import main

sys.exit(main())
