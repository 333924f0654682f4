"""`python -m wdlab.cli ...`: the same as the `wdlab` console script."""

import sys

from wdlab.cli import main

sys.exit(main())
