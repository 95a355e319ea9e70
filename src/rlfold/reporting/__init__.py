"""Run reports and run comparison: ``rlfold report RUN_DIR`` (one HTML page) and ``rlfold compare RUN ...``."""

from rlfold.reporting.compare import compare_runs
from rlfold.reporting.page import write_report

__all__ = ["compare_runs", "write_report"]
