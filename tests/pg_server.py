"""The test suite's server selection: which PostgreSQL the tests run against.

``server_from_env()`` reads ``ONLINESCHEMA_TEST_DSN`` / ``ONLINESCHEMA_TEST_PG``;
``version_matches()`` is the syntax of ``@pytest.mark.pg(spec)``.  Test-only, so it lives
here and not in the package.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable

from onlineschema.embedded.server import LocalServer, ServerUnavailable

_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+)\s*$")


def version_matches(spec: str, version: int) -> bool:
    """Whether major ``version`` satisfies ``spec``: comma-separated clauses such as
    ``">=16"``, ``"==18"`` or ``">=15,<18"``, all of which must hold (the syntax of the
    test suite's ``@pytest.mark.pg(spec)``).  Raises ValueError for a malformed spec."""
    results = []
    for clause in spec.split(","):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"bad PostgreSQL version spec {spec!r} (e.g. '>=16', '==18')")
        results.append(_OPERATORS[match.group(1)](version, int(match.group(2))))
    return all(results)


def server_from_env() -> tuple[str, LocalServer | None]:
    """The database to test against: ``(dsn, None)`` if ``ONLINESCHEMA_TEST_DSN`` is set,
    else a new LocalServer of major version ``ONLINESCHEMA_TEST_PG`` (default 18) and its
    superuser DSN.  Raises ServerUnavailable if that version can't be had here: the caller
    must stop the returned server."""
    dsn = os.environ.get("ONLINESCHEMA_TEST_DSN")
    if dsn:
        return dsn, None
    raw = os.environ.get("ONLINESCHEMA_TEST_PG", "18")
    try:
        version = int(raw)
    except ValueError:
        raise ServerUnavailable(
            f"ONLINESCHEMA_TEST_PG={raw!r}: expected a major version such as 18"
        ) from None
    server = LocalServer(version).start()
    return server.dsn(), server
