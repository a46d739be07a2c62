"""Entry point: `python bench/run.py [--quick] [--runs 3] [--out FILE] [--write-readme]`.

See bench/README.md, or `python bench/run.py --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
