"""`python -m wdlab ...` (and `torchrun -m wdlab ...`): the `wdlab` command line."""

import sys

from wdlab.cli import main

sys.exit(main())
