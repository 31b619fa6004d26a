"""Migration state kept in the database, in a schema of its own (``onlineschema``).

The state lives next to the data it describes so that a step's work and its "done"
record, or a backfill batch and its cursor, commit in one transaction: after a crash the
state never claims more than happened, nor less.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .errors import Refused, UnknownMigration

STATES = (
    "running",
    "paused",
    "failed",
    "awaiting_contract",
    "completed",
    "aborting",
    "aborted",
)

#: the version of the state schema this release writes. 1: release 0.1.0, which had no
#: version table; every later version adds to it in place (see _UPGRADES). 3: leases
#: (one executor per migration through a transaction pooler, onlineschema.lease).
SCHEMA_VERSION = 3

#: how the schema of version n - 1 becomes version n: brief statements only (CREATE ...
#: IF NOT EXISTS, ADD COLUMN IF NOT EXISTS without a volatile default), never a rewrite
#: or a scan of a state table, so an upgrade never waits behind a running migration's
#: batches for long nor makes them wait
_UPGRADES: dict[int, list[str]] = {
    2: [
        """CREATE TABLE IF NOT EXISTS {s}.schema_version (
            id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
            version int NOT NULL,
            release text NOT NULL,
            upgraded_at timestamptz NOT NULL DEFAULT now()
        )""",
    ],
    3: [
        """CREATE TABLE IF NOT EXISTS {s}.leases (
            migration text PRIMARY KEY,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL,
            taken_at timestamptz NOT NULL DEFAULT now(),
            renewed_at timestamptz NOT NULL DEFAULT now()
        )""",
    ],
}


def _release() -> str:
    """This release's version, as recorded with the state schema."""
    try:
        return f"onlineschema {metadata.version('onlineschema')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "onlineschema (source tree)"


_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.migrations (
        name text PRIMARY KEY,
        state text NOT NULL,
        changes jsonb NOT NULL,
        changes_hash text NOT NULL,
        plan jsonb NOT NULL,
        plan_hash text NOT NULL,
        server_version int NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        last_error text
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.steps (
        migration text NOT NULL REFERENCES {s}.migrations (name) ON DELETE CASCADE,
        step_id text NOT NULL,
        position int NOT NULL,
        phase text NOT NULL,
        state text NOT NULL DEFAULT 'pending',
        attempts int NOT NULL DEFAULT 0,
        started_at timestamptz,
        finished_at timestamptz,
        last_error text,
        PRIMARY KEY (migration, step_id)
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.backfills (
        migration text NOT NULL,
        step_id text NOT NULL,
        strategy text NOT NULL,
        cursor jsonb,
        end_key jsonb,
        rows_done bigint NOT NULL DEFAULT 0,
        rows_total bigint,
        batches bigint NOT NULL DEFAULT 0,
        batch_size bigint,
        busy_seconds float8 NOT NULL DEFAULT 0,
        throttled_seconds float8 NOT NULL DEFAULT 0,
        throttle_reason text,
        active_seconds float8 NOT NULL DEFAULT 0,
        rows_per_second float8,
        eta_seconds float8,
        progress float8,
        workers int,
        chunks int,
        started_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (migration, step_id),
        FOREIGN KEY (migration, step_id) REFERENCES {s}.steps ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.chunks (
        migration text NOT NULL,
        step_id text NOT NULL,
        chunk int NOT NULL,
        lo jsonb NOT NULL,
        hi jsonb NOT NULL,
        cursor jsonb,
        est_rows float8 NOT NULL DEFAULT 0,
        rows_done bigint NOT NULL DEFAULT 0,
        scanned float8 NOT NULL DEFAULT 0,
        batches bigint NOT NULL DEFAULT 0,
        busy_seconds float8 NOT NULL DEFAULT 0,
        done boolean NOT NULL DEFAULT false,
        claimed_by int,
        claimed_at timestamptz,
        claims int NOT NULL DEFAULT 0,
        updated_at timestamptz,
        PRIMARY KEY (migration, step_id, chunk),
        FOREIGN KEY (migration, step_id) REFERENCES {s}.steps ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.control (
        migration text PRIMARY KEY REFERENCES {s}.migrations (name) ON DELETE CASCADE,
        paused boolean NOT NULL DEFAULT false,
        settings jsonb NOT NULL DEFAULT '{{}}',
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
]


def _stored_version(cur: psycopg.Cursor[Any], schema: str) -> int | None:
    """The state schema's version: None when there is none, 1 without a version table."""
    cur.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        (f'"{schema}".migrations', f'"{schema}".schema_version'),
    )
    row = cur.fetchone()
    assert row is not None
    has_state, has_version = row
    if not has_version:
        return 1 if has_state else None
    cur.execute(
        sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(schema, "schema_version"))
    )
    got = cur.fetchone()
    return int(got[0]) if got and got[0] is not None else 1


def _refuse_newer(schema: str, version: int | None) -> None:
    """A release never works on a state schema that a newer release wrote."""
    if version is not None and version > SCHEMA_VERSION:
        raise Refused(
            f"the state schema {schema!r} was written by a newer onlineschema"
            f" (state schema version {version}; this release, {_release()}, knows"
            f" versions up to {SCHEMA_VERSION}): it may hold migrations this release"
            " cannot read, so it changes nothing",
            "run the newer onlineschema that wrote it (pip install -U onlineschema),"
            " or give this release a state schema of its own with --state-schema",
        )


class StateStore:
    """Reads and writes the state schema through the executor's connection."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str = "onlineschema") -> None:
        self.conn = conn
        self.schema = schema
        self._s = sql.Identifier(schema)

    def t(self, table: str) -> sql.Composable:
        return sql.Identifier(self.schema, table)

    def ensure(self) -> None:
        """Create the state schema and tables if they are missing, or upgrade them in
        place to :data:`SCHEMA_VERSION` (safe to race); refuse a schema written by a
        newer release."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext('onlineschema.state'), hashtext(%s))",
                (self.schema,),
            )
            version = _stored_version(cur, self.schema)
            _refuse_newer(self.schema, version)
            for stmt in _DDL:  # version 1, as release 0.1.0 created it
                cur.execute(sql.SQL(stmt).format(s=self._s))
            current = version or 1
            for target in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in _UPGRADES[target]:
                    cur.execute(sql.SQL(stmt).format(s=self._s))
            if version != SCHEMA_VERSION:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, version, release) VALUES (1, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
                        " release = excluded.release, upgraded_at = now()"
                    ).format(self.t("schema_version")),
                    (SCHEMA_VERSION, _release()),
                )

    def schema_version(self) -> int | None:
        """The version of the state schema in the database: None when there is none, 1
        for one made by release 0.1.0 (which had no version table)."""
        with self.conn.cursor() as cur:
            return _stored_version(cur, self.schema)

    def check_version(self) -> None:
        """Refuse to work on a state schema written by a newer release (which may hold
        migrations this release cannot read or would corrupt)."""
        _refuse_newer(self.schema, self.schema_version())

    def exists(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}".migrations',))
            row = cur.fetchone()
            return bool(row and row[0])

    # --- advisory lock: one executor per migration --------------------------------

    def _lock_args(self, name: str) -> tuple[str, str]:
        return (f"onlineschema:{self.schema}", name)

    def try_lock(self, name: str) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", self._lock_args(name)
            )
            row = cur.fetchone()
            return bool(row and row[0])

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        """The session holding ``name``'s advisory lock (pid, application, state, query)."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT l.pid, a.application_name, a.state, a.client_addr::text AS client,"
                " extract(epoch FROM now() - a.state_change)::float8 AS state_age_s"
                " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted"
                " AND l.classid = (hashtext(%s)::bigint & 4294967295)::oid"
                " AND l.objid = (hashtext(%s)::bigint & 4294967295)::oid",
                self._lock_args(name),
            )
            return cur.fetchone()

    def unlock(self, name: str) -> None:
        if self.conn.closed:
            return
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", self._lock_args(name)
            )

    # --- migrations ---------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        changes: list[dict[str, Any]],
        changes_hash: str,
        plan: dict[str, Any],
        plan_hash: str,
        server_version: int,
        step_ids: list[tuple[str, str]],
    ) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (name, state, changes, changes_hash, plan, plan_hash,"
                    " server_version) VALUES (%s, 'running', %s, %s, %s, %s, %s)"
                ).format(self.t("migrations")),
                (
                    name,
                    json.dumps(changes),
                    changes_hash,
                    json.dumps(plan),
                    plan_hash,
                    server_version,
                ),
            )
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (migration, step_id, position, phase) VALUES (%s, %s, %s, %s)"
                ).format(self.t("steps")),
                [(name, sid, i, phase) for i, (sid, phase) in enumerate(step_ids)],
            )
            cur.execute(
                sql.SQL("INSERT INTO {} (migration) VALUES (%s)").format(self.t("control")), (name,)
            )

    def get(self, name: str) -> dict[str, Any] | None:
        if not self.exists():
            return None
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE name = %s").format(self.t("migrations")), (name,)
            )
            return cur.fetchone()

    def require(self, name: str) -> dict[str, Any]:
        row = self.get(name)
        if row is None:
            known = [m["name"] for m in self.all()] if self.exists() else []
            raise UnknownMigration(
                f"no migration named {name!r} in schema {self.schema}",
                "run `onlineschema status` to list migrations"
                + (f" (known: {', '.join(known)})" if known else ""),
            )
        return row

    def all(self) -> list[dict[str, Any]]:
        if not self.exists():
            return []
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} ORDER BY created_at, name").format(self.t("migrations"))
            )
            return cur.fetchall()

    def forget(self, name: str) -> None:
        """Delete a migration's record (steps, backfill cursors and control cascade).

        Used by the Alembic integration, in the transaction that writes
        ``alembic_version``, once a migration has finished or been aborted.
        """
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE name = %s").format(self.t("migrations")), (name,)
            )

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        state = str(state)  # a MigrationState's value
        assert state in STATES
        finished = state in ("completed", "aborted")
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET state = %s, last_error = %s, updated_at = now(),"
                    " finished_at = CASE WHEN %s THEN now() END WHERE name = %s"
                ).format(self.t("migrations")),
                (state, error, finished, name),
            )

    # --- steps --------------------------------------------------------------------

    def steps(self, name: str) -> dict[str, dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE migration = %s ORDER BY position").format(
                    self.t("steps")
                ),
                (name,),
            )
            return {r["step_id"]: r for r in cur.fetchall()}

    def step_started(self, name: str, step_id: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET state = 'running', attempts = attempts + 1,"
                    " started_at = coalesce(started_at, now()), last_error = NULL"
                    " WHERE migration = %s AND step_id = %s"
                ).format(self.t("steps")),
                (name, step_id),
            )

    def step_state(
        self,
        name: str,
        step_id: str,
        state: str,
        error: str | None = None,
        cur: psycopg.Cursor[Any] | None = None,
    ) -> None:
        """Record a step's state; pass the step's own cursor to commit with its work."""
        q = sql.SQL(
            "UPDATE {} SET state = %s, last_error = %s,"
            " finished_at = CASE WHEN %s IN ('done', 'undone') THEN now() END"
            " WHERE migration = %s AND step_id = %s"
        ).format(self.t("steps"))
        if cur is not None:
            cur.execute(q, (state, error, state, name, step_id))
            return
        with self.conn.cursor() as c:
            c.execute(q, (state, error, state, name, step_id))

    # --- control (pause, live settings) -------------------------------------------

    def control(self, name: str) -> dict[str, Any]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT paused, settings FROM {} WHERE migration = %s").format(
                    self.t("control")
                ),
                (name,),
            )
            row = cur.fetchone()
        return row or {"paused": False, "settings": {}}

    def set_paused(self, name: str, paused: bool) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (migration, paused) VALUES (%s, %s) ON CONFLICT (migration)"
                    " DO UPDATE SET paused = excluded.paused, updated_at = now()"
                ).format(self.t("control")),
                (name, paused),
            )

    def update_settings(self, name: str, settings: dict[str, Any]) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {t} (migration, settings) VALUES (%s, %s) ON CONFLICT (migration)"
                    " DO UPDATE SET settings = {t}.settings || excluded.settings, updated_at = now()"
                ).format(t=self.t("control")),
                (name, json.dumps(settings)),
            )

    # --- backfill progress ----------------------------------------------------------

    def backfill(self, name: str, step_id: str) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE migration = %s AND step_id = %s").format(
                    self.t("backfills")
                ),
                (name, step_id),
            )
            return cur.fetchone()

    def backfills(self, name: str) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT *, extract(epoch FROM updated_at - started_at)::float8 AS elapsed"
                    " FROM {} WHERE migration = %s"
                ).format(self.t("backfills")),
                (name,),
            )
            return cur.fetchall()


class BackfillStore:
    """The state rows of one backfill step: its ``backfills`` row (what was frozen at
    start, then progress) and its ``chunks`` rows (bounds, cursor, counters, claims).

    Every method runs on the cursor or connection it is given, not on the executor's:
    a worker updates its chunk's cursor on its own connection, inside the batch's
    transaction, so the rows a batch changed and the cursor after it commit together.
    """

    def __init__(self, schema: str, migration: str, step_id: str) -> None:
        self.schema = schema
        self.migration = migration
        self.step_id = step_id

    @classmethod
    def of(cls, store: StateStore, migration: str, step_id: str) -> BackfillStore:
        return cls(store.schema, migration, step_id)

    def t(self, table: str) -> sql.Composable:
        return sql.Identifier(self.schema, table)

    def create(
        self,
        cur: psycopg.Cursor[Any],
        *,
        strategy: str,
        end: Any,
        rows_total: float,
        batch_size: int,
        workers: int,
        chunks: list[tuple[Any, Any, float]],
    ) -> None:
        """The backfill's row and one row per chunk ``(lo, hi, estimated rows)``, each
        chunk's cursor at its start; nothing if the backfill's row exists already."""
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (migration, step_id, strategy, cursor, end_key, rows_total,"
                " batch_size, workers, chunks) VALUES (%s, %s, %s, NULL, %s, %s, %s, %s, %s)"
                " ON CONFLICT (migration, step_id) DO NOTHING"
            ).format(self.t("backfills")),
            (
                self.migration,
                self.step_id,
                strategy,
                json.dumps(end),
                rows_total,
                batch_size,
                workers,
                len(chunks),
            ),
        )
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (migration, step_id, chunk, lo, hi, cursor, est_rows)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ).format(self.t("chunks")),
            [
                (
                    self.migration,
                    self.step_id,
                    i,
                    json.dumps(lo),
                    json.dumps(hi),
                    json.dumps(lo),
                    est,
                )
                for i, (lo, hi, est) in enumerate(chunks)
            ],
        )

    def write_progress(
        self,
        conn: psycopg.Connection[Any],
        *,
        rows_done: int,
        batches: int,
        busy_seconds: float,
        batch_size: int,
        throttle_reason: str | None,
        throttled_seconds: float,
        active_seconds: float,
        rows_per_second: float,
        eta_seconds: float | None,
        progress: float,
        workers: int,
    ) -> None:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET rows_done = %s, batches = %s, busy_seconds = %s,"
                    " batch_size = %s, throttle_reason = %s, throttled_seconds = %s,"
                    " active_seconds = %s, rows_per_second = %s, eta_seconds = %s,"
                    " progress = %s, workers = %s, updated_at = now()"
                    " WHERE migration = %s AND step_id = %s"
                ).format(self.t("backfills")),
                (
                    rows_done,
                    batches,
                    busy_seconds,
                    batch_size,
                    throttle_reason,
                    throttled_seconds,
                    active_seconds,
                    rows_per_second,
                    eta_seconds,
                    progress,
                    workers,
                    self.migration,
                    self.step_id,
                ),
            )

    # --- chunks -------------------------------------------------------------------

    def chunks(self, conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT chunk, lo, hi, cursor, est_rows, done, rows_done, scanned, batches,"
                    " busy_seconds FROM {} WHERE migration = %s AND step_id = %s ORDER BY chunk"
                ).format(self.t("chunks")),
                (self.migration, self.step_id),
            )
            return cur.fetchall()

    def claimers(self, conn: psycopg.Connection[Any]) -> list[int]:
        """The backend pids that claimed this step's chunks not done yet: the batch
        sessions of the processes working on it."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT DISTINCT claimed_by FROM {} WHERE migration = %s AND step_id = %s"
                    " AND NOT done AND claimed_by IS NOT NULL"
                ).format(self.t("chunks")),
                (self.migration, self.step_id),
            )
            return [int(r[0]) for r in cur.fetchall()]

    def remaining(self, conn: psycopg.Connection[Any]) -> int:
        """Chunks not done yet (claimed by someone or not)."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT count(*) FROM {} WHERE migration = %s AND step_id = %s AND NOT done"
                ).format(self.t("chunks")),
                (self.migration, self.step_id),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def next_unclaimed(
        self, cur: psycopg.Cursor[dict[str, Any]], after: int, held: list[int]
    ) -> dict[str, Any] | None:
        """The first chunk after ``after``, not done, not in ``held``, whose row no other
        transaction has locked; locked now (``FOR UPDATE SKIP LOCKED``)."""
        cur.execute(
            sql.SQL(
                "SELECT chunk, lo, hi, cursor, est_rows, done, rows_done, scanned"
                " FROM {} WHERE migration = %s AND step_id = %s AND NOT done"
                " AND chunk > %s AND NOT (chunk = ANY(%s))"
                " ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).format(self.t("chunks")),
            (self.migration, self.step_id, after, held),
        )
        return cur.fetchone()

    def mark_claimed(self, cur: psycopg.Cursor[Any], chunk: int) -> None:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET claimed_by = pg_backend_pid(), claimed_at = now(),"
                " claims = claims + 1 WHERE migration = %s AND step_id = %s"
                " AND chunk = %s"
            ).format(self.t("chunks")),
            (self.migration, self.step_id, chunk),
        )

    def lock_chunk(self, cur: psycopg.Cursor[Any], chunk: int) -> tuple[Any, bool] | None:
        """(cursor, done) of ``chunk``, its row locked until the transaction ends."""
        cur.execute(
            sql.SQL(
                "SELECT cursor, done FROM {} WHERE migration = %s AND step_id = %s"
                " AND chunk = %s FOR UPDATE"
            ).format(self.t("chunks")),
            (self.migration, self.step_id, chunk),
        )
        row = cur.fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def finish_chunk(self, cur: psycopg.Cursor[Any], chunk: int) -> None:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET done = true, updated_at = now() WHERE migration = %s"
                " AND step_id = %s AND chunk = %s"
            ).format(self.t("chunks")),
            (self.migration, self.step_id, chunk),
        )

    def advance_chunk(
        self,
        cur: psycopg.Cursor[Any],
        chunk: int,
        *,
        cursor: Any,
        rows: int,
        scanned: float,
        seconds: float,
        done: bool,
    ) -> None:
        """Record one batch of ``chunk``: its cursor after the batch and its counters."""
        cur.execute(
            sql.SQL(
                "UPDATE {} SET cursor = %s, rows_done = rows_done + %s, scanned = scanned + %s,"
                " batches = batches + 1, busy_seconds = busy_seconds + %s, done = %s,"
                " updated_at = now() WHERE migration = %s AND step_id = %s AND chunk = %s"
            ).format(self.t("chunks")),
            (json.dumps(cursor), rows, scanned, seconds, done, self.migration, self.step_id, chunk),
        )
