"""``python -m tests.bench``: run the benchmark (see run.py)."""

import sys

from tests.bench.run import main

sys.exit(main())
