"""``python -m perf``: the throughput regression suite (see perf/README.md)."""

import sys

from perf.run import main

sys.exit(main())
