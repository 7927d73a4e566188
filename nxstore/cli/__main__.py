"""`python -m nxstore.cli`: the same as the `nxstore` console script."""

import sys

from . import console_main

sys.exit(console_main())
