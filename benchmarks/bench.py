"""Side-by-side benchmark of SE / CBAM / the bilinear sampler: runs :func:`visattn.commands.bench.main`.

Usage: ``python benchmarks/bench.py --help`` (same options as ``visattn bench``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from visattn.commands.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
