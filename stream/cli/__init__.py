"""The ``kpimargin`` command line."""
