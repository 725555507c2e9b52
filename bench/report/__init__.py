"""The report step: reads run folders, writes tables, statistics, plots and one HTML page.

``build_report`` is the entry point (``bench report``, and the end of ``bench run``). The
modules follow the data flow: ``load`` (runs and the fairness guard), ``stats`` (tests,
intervals, ranking), ``tables`` (arranged, formatted), ``plots`` and ``qualitative``
(figures), ``render`` and ``html`` (formats), ``build`` (writes the folder).
"""
from bench.report.build import Report, build_report

__all__ = ["Report", "build_report"]
