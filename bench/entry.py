"""The bench scripts' entry point: an rlfold error (a missing model, a config typo) ends the script with its
message and exit status 2, as the ``rlfold`` command does, not with a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rlfold.core.errors import RlfoldError


def run_main(main: Callable[[], object]) -> None:
    """Call ``main()``; an :class:`RlfoldError` prints ``error: <message>`` and exits with status 2."""
    try:
        main()
    except RlfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
