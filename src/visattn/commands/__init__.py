"""Sub-commands of the ``visattn`` command line (see ``visattn.cli`` for the protocol).

Tests: ``tests/cli/``.
"""

__all__: list[str] = []
