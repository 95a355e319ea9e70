"""A sandbox for untrusted Python (model-written programs): ``run_sandboxed`` runs a program and its
tests in a limited, isolated child interpreter and returns one status per test.

``runner`` is the parent side; ``child`` is the program the child interpreter runs. Both use the
standard library only and import nothing else from rlfold, so execution-based rewards and tools
can share them.
"""

from rlfold.sandbox.runner import STATUSES, SandboxResult, run_sandboxed

__all__ = ["STATUSES", "SandboxResult", "run_sandboxed"]
