"""Rebuild the golden catalog snapshots from real servers.

    PYTHONPATH=$PWD:$PWD/tests python tests/golden/capture.py [--missing] [CASE_ID ...]

For each case (``add_column_nullable.pg18``...): start a server of that major once,
create a database, run the case's setup SQL, read the catalog the planner would read
for its changes (``catalog_request`` then ``read_catalog``, as ``Executor.plan`` does)
and write ``catalogs/<case id>.json`` with the request beside it. Run
``pytest tests/unit/test_golden_plans.py --update-golden`` afterwards to refresh the
plans.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from onlineschema.catalog import read_catalog
from onlineschema.embedded.server import LocalServer
from onlineschema.planner import catalog_request

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from golden.cases import BY_ID, Case  # noqa: E402


def capture(admin: str, case: Case, major: int) -> dict[str, object]:
    name = f"golden_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(admin, dbname=name), autocommit=True) as conn:
            conn.execute(case.setup.encode())
            req = catalog_request(case.changes)
            catalog = read_catalog(conn, **req)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    assert catalog.major == major, (catalog.major, major)
    return {"request": json.loads(json.dumps(req)), "catalog": catalog.to_dict()}


def main(argv: list[str]) -> None:
    missing = "--missing" in argv
    wanted = [a for a in argv if not a.startswith("--")] or sorted(BY_ID)
    if missing:
        wanted = [i for i in wanted if not (HERE / "catalogs" / f"{i}.json").exists()]
    for major in sorted({BY_ID[i][1] for i in wanted}):
        server = LocalServer(major).start()
        try:
            for case_id in wanted:
                case, m = BY_ID[case_id]
                if m != major:
                    continue
                data = capture(server.dsn(), case, major)
                path = HERE / "catalogs" / f"{case_id}.json"
                path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
                print("captured", path.name)
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
