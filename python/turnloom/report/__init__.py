"""Reports people can read: a self-contained HTML report of a run
(`write_report`, ``turnloom report``) and a comparison of two runs with
bootstrap confidence intervals (`compare_runs`, ``turnloom compare``)."""

from turnloom.report.compare import Comparison, MetricDiff, compare_runs, format_table
from turnloom.report.html import write_report

__all__ = ["Comparison", "MetricDiff", "compare_runs", "format_table", "write_report"]
