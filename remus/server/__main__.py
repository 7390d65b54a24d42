"""``python -m remus.server``: the same as ``remus server``."""

import sys

from remus.cli import main

if __name__ == "__main__":
    sys.exit(main(["server", *sys.argv[1:]]))
