from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import make_orders


@pytest.fixture
def orders(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """``users`` and ``orders`` (helpers.make_orders) in the test's database."""
    make_orders(conn)
    return conn
