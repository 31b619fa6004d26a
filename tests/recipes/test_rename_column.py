"""The rename_column recipe: its golden plans and its lifecycle on a real server (the
scenarios with writers during the window are in test_breaking.py)."""

from __future__ import annotations

import pytest
from golden.cases import PEOPLE, golden_ids
from golden.compare import check
from harness import Conn, contract_lifecycle
from helpers import column_must_exist, column_must_not_exist, constraint_must_exist, count

from onlineschema import RenameColumn


def test_rename_through_a_column_copy(dsn: str, conn: Conn) -> None:
    conn.execute(PEOPLE)
    conn.execute(
        "INSERT INTO people (email, age) SELECT 'p' || g || '@x', g FROM generate_series(1, 300) g"
    )
    conn.execute("INSERT INTO logins (email) SELECT 'p' || g || '@x' FROM generate_series(1, 50) g")

    def both(c: Conn) -> None:
        column_must_exist(c, "people", "email", nullable=False)
        column_must_exist(c, "people", "email_address", nullable=False)
        c.execute("INSERT INTO people (email, age) VALUES ('old@x', 1)")
        assert count(c, "SELECT count(*) FROM people WHERE email_address = 'old@x'") == 1
        c.execute("DELETE FROM people WHERE email = 'old@x'")

    def renamed(c: Conn) -> None:
        column_must_not_exist(c, "people", "email")
        column_must_exist(c, "people", "email_address", type="character varying(100)")
        constraint_must_exist(c, "people", "people_email_key", validated=True)
        constraint_must_exist(c, "logins", "logins_email_fkey", validated=True)
        assert (
            count(
                c, "SELECT count(*) FROM logins JOIN people ON people.email_address = logins.email"
            )
            == 50
        )

    contract_lifecycle(
        dsn,
        conn,
        [RenameColumn("people", "email", "email_address")],
        before_contract=both,
        after=renamed,
        tables=("people", "logins"),
        mask_oids=True,
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("rename_column"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
