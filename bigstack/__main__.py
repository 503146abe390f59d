"""``python -m bigstack``: the ``bigstack`` command, for an environment without its script."""

import sys

from .cli import main

sys.exit(main())
