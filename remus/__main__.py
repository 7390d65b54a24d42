"""``python -m remus``: the same as the ``remus`` command."""

import sys

from remus.cli import main

if __name__ == "__main__":
    sys.exit(main())
