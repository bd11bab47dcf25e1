"""Audit tools: export topics, replay the log, explain a number, report."""
