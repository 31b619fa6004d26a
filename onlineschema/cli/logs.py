"""Logging set-up for the command line (and only for it: library code never configures
logging, it just gets ``structlog.stdlib.get_logger("onlineschema.xxx")``).

Everything goes to **stderr**, so that plans and ``--format json`` output on stdout stay
clean. ``console`` renders events for people (colours on a terminal), ``json`` renders one
JSON object per line. structlog events go through the standard library's logging, so
warnings of other libraries come out in the same format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import Processor

from .. import observe

FORMATS = ("console", "json")
LEVELS = ("debug", "info", "warning", "error")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is *now*: the progress display swaps it for a
    proxy that prints above its bars, and a handler holding the original stream would
    draw through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr
            stream.write(text + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure(fmt: str = "console", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in ``fmt`` at ``level``.

    ``level`` applies to onlineschema's own loggers; other libraries log warnings and
    errors only (and everything with ``debug``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(
            fmt="iso" if fmt == "json" else "%Y-%m-%d %H:%M:%S", utc=fmt == "json"
        ),
    ]
    renderer: Processor
    # Tracebacks never show local variables: they hold DSNs, passwords included.
    if fmt == "json":
        tail: list[Processor] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        tail = []
        terminal = _is_terminal(sys.stderr)
        renderer = structlog.dev.ConsoleRenderer(
            colors=terminal,
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
            if terminal
            else structlog.dev.plain_traceback,
        )
    structlog.configure(
        processors=[
            observe.tap,  # metrics and hooks see every event, debug ones included
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))
    logging.getLogger("onlineschema").setLevel(numeric)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
