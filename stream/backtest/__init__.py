"""``kpimargin backtest``: validation of the margin model on a panel of KPI series, and of
what the processor published (``--from-log``).

Modules: :mod:`.panel` (input and its validation), :mod:`.generate` (synthetic panels with
known truth), :mod:`.forecast` (per-origin forecasts through :mod:`stream.core.model`, never a
copy of it), :mod:`.stats` (the tests), :mod:`.summary` (the tests applied per cell and the
gates), :mod:`.plots`, :mod:`.report` (``summary.json``, ``forecasts.csv``, ``report.md``),
:mod:`.from_log` and :mod:`.cli`. Everything but the broker path of ``--from-log`` is pure:
no faust or aiokafka import. The method is described in ``docs/backtest.md``.
"""
