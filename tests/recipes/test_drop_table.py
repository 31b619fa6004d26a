"""The drop_table recipe: its golden plans and its lifecycle on a real server."""

from __future__ import annotations

import pytest
from golden.cases import DROP_TABLE, golden_ids
from golden.compare import check
from harness import Conn, contract_lifecycle
from helpers import constraint_must_exist, constraint_must_not_exist, count

from onlineschema import DropTable


def test_drop_table_is_contract_only(dsn: str, conn: Conn) -> None:
    conn.execute(DROP_TABLE)
    conn.execute("INSERT INTO parent SELECT generate_series(1, 10)")
    conn.execute("INSERT INTO dropme SELECT g, 1 + g % 10, g FROM generate_series(1, 100) g")
    conn.execute("INSERT INTO child SELECT g, g FROM generate_series(1, 50) g")

    def still_there(c: Conn) -> None:
        assert count(c, "SELECT count(*) FROM dropme") == 100
        constraint_must_exist(c, "child", "child_dropme_id_fkey")

    def dropped(c: Conn) -> None:
        assert c.execute("SELECT to_regclass('dropme')").fetchone() == (None,)
        constraint_must_not_exist(c, "child", "child_dropme_id_fkey")
        assert count(c, "SELECT count(*) FROM child") == 50

    contract_lifecycle(
        dsn,
        conn,
        [DropTable("dropme")],
        before_contract=still_there,
        after=dropped,
        tables=("parent", "child"),
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("drop_table"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
