"""Logging for the CLI and the dashboard: one line per request at INFO (hit or miss, the
reason, the latency, the user and the first characters of the key's digest, never the
answers), as text or as one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Where a record's structured fields travel (`log.info(..., extra={FIELDS: {...}})`).
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message key=value ...`: the fields on the same line."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, FIELDS, {})
        return " ".join([line, *(f"{k}={v}" for k, v in fields.items() if v not in (None, "", ()))])


def configure(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Our records (the `core` loggers) to stderr; the root logger stays as the host set it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    core = logging.getLogger("core")
    core.handlers[:] = [handler]
    core.setLevel(level)
    core.propagate = False
