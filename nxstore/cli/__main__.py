"""`python -m nxstore.cli`: the same as the `nxstore` console script."""

import sys

from . import main

sys.exit(main())
