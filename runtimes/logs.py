"""Where a ``flows`` process logs: stderr, as text lines or one JSON object a line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if hasattr(record, "process_index"):
            entry["process"] = record.process_index
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _ProcessTag(logging.Filter):
    def __init__(self, process: int) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_index = self.process
        return True


def setup_logging(fmt: str, level: str = "INFO", process: int | None = None) -> None:
    """Log lines to stderr; a child of ``--processes`` (``process``: its index) tags each
    line with it, ``p<i>`` in text and ``"process"`` in JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        tag = "" if process is None else f"p{process} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(threadName)s %(message)s")
        )
    if process is not None:
        handler.addFilter(_ProcessTag(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the registry client's HTTP library logs every request at INFO; its failures reach
    # the log as flows' own errors (retries, refusals), so only its warnings are kept
    for chatty in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
