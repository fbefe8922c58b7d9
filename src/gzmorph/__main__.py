"""``python -m gzmorph``: the CLI, and the entry point ``torchrun ... -m gzmorph train`` starts in each process."""

import sys

from .cli import main

if __name__ == "__main__":  # not on a plain import (tools and tests import every module)
    sys.exit(main())
