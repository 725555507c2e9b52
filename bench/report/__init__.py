"""The report step: reads run folders, writes tables, statistics, plots and one HTML page.

``build_report`` is the entry point (the end of ``bench run``; ``bench report`` calls it once per
cohort through ``cohorts.build_reports``, with an index page when there are several). The
modules follow the data flow: ``load`` (runs and the fairness guard), ``stats`` (tests,
intervals, ranking), ``tables`` (arranged, formatted), ``plots`` and ``qualitative``
(figures), ``render`` and ``html`` (formats), ``build`` (writes the folder).
"""
from bench.report.build import Report, build_report

__all__ = ["Report", "build_report"]
