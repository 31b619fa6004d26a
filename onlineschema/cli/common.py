"""What every command shares: the duration parameter type, the DSN rules and opening an
Executor (exit 2 with one line when the database cannot be reached)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
import psycopg

from ..errors import ConnectionFailed, Refused
from ..executor import Executor, Settings, parse_duration

# --- parameter types ----------------------------------------------------------------


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:  # click < 8.4 has no generic ParamType
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """``500ms``, ``2s``, ``1min`` or a number of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def normalize_dsn(dsn: str) -> str:
    """Accept SQLAlchemy URLs: ``postgresql+psycopg://...`` -> ``postgresql://...``."""
    return re.sub(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", r"\1://", dsn.strip())


def require_dsn(dsn: str | None) -> str:
    if not dsn or not dsn.strip():
        raise Refused(
            "no database to connect to",
            "pass --dsn 'postgresql://user@host/db', or set ONLINESCHEMA_DSN or DATABASE_URL",
        )
    return normalize_dsn(dsn)



@contextlib.contextmanager
def open_executor(dsn: str | None, settings: Settings) -> Iterator[Executor]:
    """An Executor on ``dsn``; any failure to connect is exit 2 with one line."""
    target = require_dsn(dsn)
    try:
        ex = Executor(target, settings)
    except ConnectionFailed:
        raise
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConnectionFailed(
            f"could not connect to the database: {first}\n"
            "  fix: check --dsn (or ONLINESCHEMA_DSN / DATABASE_URL)"
        ) from None
    try:
        yield ex
    finally:
        ex.close()
