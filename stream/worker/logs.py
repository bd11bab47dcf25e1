"""The worker's log lines: plain text by default, one JSON object per line with
``KPIMARGIN_LOG_FORMAT=json`` -- for log shippers (Loki, Elasticsearch, Cloud Logging).

A JSON line has ``ts`` (UTC, RFC 3339 with milliseconds), ``level``, ``logger`` and
``message``; ``partition`` and ``offset`` where the line is about one log partition (the
worker passes them as ``extra``); ``exc`` with the traceback when there is one. faust's and
aiokafka's own lines go through the same handler.
"""

from __future__ import annotations

import logging
import time

import orjson

# Attributes a LogRecord always has: anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_FIELDS = ("partition", "offset", "topic")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def logging_config(log_format: str, level: str) -> dict | None:
    """The ``logging.config.dictConfig`` the worker runs with (None: faust's own text format)."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
