"""``python -m visattn`` runs the command line (``visattn.cli.main``); also used by torchrun."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
