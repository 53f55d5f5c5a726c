"""Former home of ``visattn bench``, now :mod:`visattn.commands.bench`; kept so that
``import visattn.bench`` and ``python -m visattn.bench`` still work.

Importing it warns (``DeprecationWarning``); ``python -m visattn.bench`` runs the benchmark
without a warning.
"""

from __future__ import annotations

import warnings

from .commands import bench as _bench
from .commands.bench import *  # noqa: F403  (its public names)
from .commands.bench import main

__all__ = list(_bench.__all__)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

warnings.warn(
    "visattn.bench moved to visattn.commands.bench; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
