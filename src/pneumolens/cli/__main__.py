"""``python -m pneumolens.cli``, as ``pneumolens``."""

import sys

from pneumolens.cli import main

sys.exit(main())
