"""Reports over finished runs: tables, the Pareto view, robust-weight trajectories, teacher calibration.

``build_report(paths, out_dir)`` is the whole pipeline; its parts are usable alone:
:func:`discover_runs` / :func:`load_run` read run directories, :func:`aggregate` groups them over seeds,
:mod:`~groupdistil.report.stats` holds the statistics, :mod:`~groupdistil.report.plots` the figures.
"""

from groupdistil.report.aggregate import DatasetSummary, Row, aggregate, pareto_optimal
from groupdistil.report.build import ReportFiles, build_report
from groupdistil.report.runs import GroupWeights, Run, discover_runs, load_group_weights, load_run
from groupdistil.report.stats import Summary, bootstrap_mean_ci, summarise

__all__ = [
    "DatasetSummary",
    "GroupWeights",
    "ReportFiles",
    "Row",
    "Run",
    "Summary",
    "aggregate",
    "bootstrap_mean_ci",
    "build_report",
    "discover_runs",
    "load_group_weights",
    "load_run",
    "pareto_optimal",
    "summarise",
]
