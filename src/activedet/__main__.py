"""``python -m activedet``: the command line (what ``torchrun -m activedet`` starts)."""

import sys

from activedet.cli import main

sys.exit(main())
