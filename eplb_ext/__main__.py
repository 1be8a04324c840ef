"""``python -m eplb_ext``: the ``eplb-ext`` command line."""

import sys

from .cli import main

sys.exit(main())
