"""Prisma Migrate's ``deploy`` and ``status``, with each ``migration.sql`` run online.

``deploy(dsn, "prisma/migrations")`` does what ``prisma migrate deploy`` does (engine
command ``applyMigrations``) except that each pending migration runs as one onlineschema
migration (named ``prisma:<migration name>``) instead of as one SQL script:

1. list ``<dir>/*/migration.sql``, ordered by directory name, and refuse a
   ``migration_lock.toml`` that names another provider (Prisma's P3019);
2. take Prisma Migrate's advisory lock, ``pg_advisory_lock(72707369)``, on a session of
   its own, waiting at most ``lock_wait`` seconds (Prisma waits 10 s, then P1002), so a
   concurrent ``prisma migrate deploy`` (or a second ``onlineschema prisma deploy``)
   waits for this one or fails instead of applying a migration twice;
3. read ``_prisma_migrations`` in the connection's schema; a failed row
   (``finished_at`` and ``rolled_back_at`` both NULL) stops everything (P3009); a
   migration is pending when no row of its name has ``rolled_back_at IS NULL``;
4. translate every pending ``migration.sql`` (:func:`onlineschema.sqlinput.parse_sql`)
   before anything runs: one the SQL front end refuses is refused with the migration's
   name, and nothing is changed or recorded;
5. create ``_prisma_migrations`` as Prisma creates it when it is missing (and, like
   Prisma, refuse to when the schema already has tables: P3005, baseline first);
6. run each pending migration online, then record it: one row with a new UUID, the
   SHA-256 of the file, ``started_at`` = when the onlineschema migration was created (the
   real start, across resumes), ``finished_at`` = now, ``logs`` NULL and
   ``applied_steps_count`` 1, which is what a successful ``prisma migrate deploy``
   leaves. The row is written only at the end, in the transaction that also deletes the
   onlineschema state of that migration, so Prisma never sees a half-done migration as
   a failed one, and a deploy stopped or killed at any point is resumed by running
   ``deploy`` again: the unfinished onlineschema migration carries on where it stopped,
   and a migration that finished but was not recorded yet is recorded (not run again).

An empty ``migration.sql`` (or one with only comments and statements onlineschema drops,
such as ``SET``) is recorded as applied without running anything, as Prisma does.

Prisma orders migration directories with JavaScript's ``localeCompare`` (ICU's root
collation). For the names Prisma generates (``YYYYMMDDHHMMSS_name``) the 14-digit
timestamp decides and a plain string sort would do; :func:`migration_sort_key` also
follows ICU where a plain sort does not, for ASCII names and accented letters:
punctuation before digits before letters, letter case and accents only breaking ties
(lowercase first). That is checked against Node's ``localeCompare`` in the tests.

Beyond Prisma: an applied migration whose file changed since (checksum mismatch, with
Prisma's own tolerance of CRLF/LF and its old checksum format) is reported by ``deploy``
(a warning) and by ``status``; Prisma 6 ``deploy``/``status`` say nothing about it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from ..changes import Change
from ..connection import open_dsn
from ..errors import OnlineSchemaError, Refused, UnsupportedStatement
from ..executor import (
    Executor,
    MigrationState,
    Result,
    Settings,
    apply_through_contract,
    changes_hash,
)
from ..pooler import is_pooled
from ..session import ms

__all__ = [
    "ADVISORY_LOCK_KEY",
    "MIGRATIONS_TABLE",
    "AppliedMigration",
    "DeployResult",
    "History",
    "LocalMigration",
    "MigrationRow",
    "checksum",
    "checksum_matches",
    "deploy",
    "libpq_dsn",
    "migration_sort_key",
    "read_history",
    "read_migrations",
    "state_name",
    "status",
]

log = structlog.stdlib.get_logger("onlineschema.prisma")

#: "72707369 is a unique number we chose to identify Migrate" (prisma-engines, postgres.rs)
ADVISORY_LOCK_KEY = 72707369
#: how long Prisma's schema engine waits for that lock before failing with P1002
LOCK_WAIT = 10.0
MIGRATIONS_TABLE = "_prisma_migrations"
MIGRATION_FILE = "migration.sql"
LOCK_FILE = "migration_lock.toml"
#: prefix of the onlineschema migration that runs a Prisma migration
STATE_PREFIX = "prisma:"
#: providers whose migrations this runs (the schema engine's PostgreSQL connector)
PROVIDERS = ("postgresql", "postgres")

# The schema engine's create_migrations_table for PostgreSQL, column for column
# (prisma-engines schema-engine/connectors/sql-schema-connector/src/flavour/postgres.rs).
_CREATE_TABLE = """\
CREATE TABLE {table} (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)"""

#: query parameters of a Prisma connection URL that libpq does not know
_PRISMA_URL_PARAMS = frozenset(
    {
        "schema",
        "connection_limit",
        "pool_timeout",
        "pgbouncer",
        "statement_cache_size",
        "socket_timeout",
        "sslidentity",
        "sslpassword",
        "sslaccept",
        "single_use_connections",
        "max_connection_lifetime",
        "max_idle_connection_lifetime",
    }
)

_RESOLVE = "https://pris.ly/d/migrate-resolve"


# --- the migrations directory ---------------------------------------------------------


def checksum(script: bytes) -> str:
    """Prisma's checksum of a migration script: SHA-256, 64 lowercase hex digits."""
    return hashlib.sha256(script).hexdigest()


def checksum_matches(script: bytes, recorded: str) -> bool:
    """Does ``recorded`` match ``script`` the way the schema engine checks it: the script as
    it is, with CRLF turned into LF or LF into CRLF, each also in the old checksum format
    that did not zero-pad the hex digits (prisma-engines#1887)."""
    variants = {
        script,
        script.replace(b"\r\n", b"\n"),
        script.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
    }
    for variant in variants:
        digest = hashlib.sha256(variant).digest()
        if recorded in (digest.hex(), "".join(f"{b:x}" for b in digest)):
            return True
    return False


@dataclass(frozen=True)
class LocalMigration:
    """One ``<dir>/<name>/migration.sql``."""

    name: str
    path: Path
    script: bytes

    @property
    def checksum(self) -> str:
        return checksum(self.script)

    def text(self) -> str:
        try:
            return self.script.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(
                f"Prisma migration {self.name}: {self.path} is not valid UTF-8 ({exc.reason}"
                f" at byte {exc.start})",
                "save the file as UTF-8, as Prisma writes it",
            ) from None


def read_migrations(directory: str | Path) -> list[LocalMigration]:
    """The migrations of a Prisma migrations directory, in the order Prisma applies them.

    Refuses a missing directory, a sub-directory without ``migration.sql`` (Prisma's
    P3015) and a ``migration_lock.toml`` naming a provider other than PostgreSQL (P3019).
    """
    root = Path(directory)
    if not root.is_dir():
        raise Refused(
            f"no Prisma migrations directory at {root}",
            "pass --dir with the path of prisma/migrations (it holds one directory per"
            " migration, each with a migration.sql)",
        )
    provider = _lock_file_provider(root / LOCK_FILE)
    if provider is not None and provider not in PROVIDERS:
        raise Refused(
            f"{root / LOCK_FILE} says the migrations are for provider {provider!r}, not"
            " postgresql (Prisma's P3019)",
            "point --dir at the migrations of a PostgreSQL datasource, or at a database of"
            " that provider with Prisma itself",
        )
    out = []
    dirs = sorted(
        (p for p in root.iterdir() if p.is_dir()), key=lambda p: migration_sort_key(p.name)
    )
    for entry in dirs:
        script = entry / MIGRATION_FILE
        if not script.is_file():
            raise Refused(
                f"Prisma migration directory {entry} has no {MIGRATION_FILE} (Prisma's P3015)",
                "delete the directory or restore its migration.sql",
            )
        out.append(LocalMigration(entry.name, script, script.read_bytes()))
    return out


#: ICU root collation's order of ASCII punctuation and symbols (all before digits)
_ICU_PUNCTUATION = " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"


def migration_sort_key(name: str) -> tuple[Any, ...]:
    """Sort key ordering directory names as JavaScript's ``a.localeCompare(b)`` does
    (ICU root collation) for ASCII and accented letters: first by character class
    (punctuation and symbols, then digits, then letters) and base letter, then by
    accents, then by case (lowercase first), then by code point."""
    primary, secondary, tertiary = [], [], []
    for ch in name:
        base = unicodedata.normalize("NFD", ch)
        accents = base[1:]
        letter = base[0].casefold()
        if letter.isdigit():
            primary.append((1, letter))
        elif letter.isalpha():
            primary.append((2, letter))
        else:
            rank = _ICU_PUNCTUATION.find(letter)
            primary.append((0, str(rank if rank >= 0 else len(_ICU_PUNCTUATION)).zfill(3) + letter))
        secondary.append(accents)
        tertiary.append(ch.isupper())
    return (primary, secondary, tertiary, name)


def _lock_file_provider(path: Path) -> str | None:
    """The provider named by ``migration_lock.toml`` as the schema engine reads it: the
    first line starting with ``provider``, without ``provider =`` and quotes."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("provider"):
            value = line[len("provider") :].strip().removeprefix("=").strip()
            return value.strip("\"'")
    return None


# --- the database ---------------------------------------------------------------------


def libpq_dsn(url: str) -> str:
    """A connection string for libpq from a Prisma ``DATABASE_URL``.

    Prisma's own query parameters (``schema``, ``connection_limit``, ``pgbouncer``, ...)
    are not libpq's and are dropped; the schema Prisma works in (``?schema=``, default
    ``public``) becomes the session's ``search_path``, as the schema engine sets it, so
    the migrations' unqualified names and ``_prisma_migrations`` land where Prisma puts
    them. A ``key=value`` connection string is returned as it is.
    """
    if not re.match(r"^postgres(?:ql)?://", url):
        return url
    parts = urlsplit(url)
    schema = "public"
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value or schema
        elif key not in _PRISMA_URL_PARAMS:
            kept.append((key, value))
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    options = conninfo_to_dict(dsn).get("options") or ""
    search_path = schema if re.fullmatch(r"[a-z_][a-z0-9_$]*", schema) else _quote_ident(schema)
    # libpq splits options on spaces; a backslash escapes a space or a backslash
    escaped = search_path.replace("\\", "\\\\").replace(" ", "\\ ")
    return make_conninfo(dsn, options=f"{options} -c search_path={escaped}".strip())


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class MigrationRow:
    """A row of ``_prisma_migrations``."""

    id: str
    checksum: str
    finished_at: datetime | None
    migration_name: str
    logs: str | None
    rolled_back_at: datetime | None
    started_at: datetime
    applied_steps_count: int

    @property
    def failed(self) -> bool:
        """Failed, or in progress under Prisma itself: Prisma cannot tell them apart."""
        return self.finished_at is None and self.rolled_back_at is None

    @property
    def applied(self) -> bool:
        return self.finished_at is not None and self.rolled_back_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "checksum": self.checksum,
            "migration_name": self.migration_name,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "rolled_back_at": self.rolled_back_at.isoformat() if self.rolled_back_at else None,
            "applied_steps_count": self.applied_steps_count,
            "logs": self.logs,
        }


@dataclass(frozen=True)
class Edited:
    """An applied migration whose ``migration.sql`` no longer matches its checksum."""

    name: str
    recorded: str
    current: str


@dataclass
class History:
    """The migrations directory against ``_prisma_migrations`` (and onlineschema's state)."""

    schema: str
    local: list[LocalMigration]
    rows: list[MigrationRow]
    table_exists: bool
    #: Prisma migration name -> (onlineschema migration name, its state), for the pending
    #: migrations that an earlier deploy started and did not finish
    unfinished: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def pending(self) -> list[LocalMigration]:
        """Migrations without a row that is not rolled back: what deploy applies."""
        live = {r.migration_name for r in self.rows if r.rolled_back_at is None}
        return [m for m in self.local if m.name not in live]

    @property
    def applied(self) -> list[str]:
        return [m.name for m in self.local if any(r.applied for r in self._rows(m.name))]

    @property
    def failed(self) -> list[MigrationRow]:
        return [r for r in self.rows if r.failed]

    @property
    def edited(self) -> list[Edited]:
        out = []
        for m in self.local:
            for r in self._rows(m.name):
                if r.applied and not checksum_matches(m.script, r.checksum):
                    out.append(Edited(m.name, r.checksum, m.checksum))
                    break
        return out

    @property
    def missing_locally(self) -> list[MigrationRow]:
        """Applied rows without a directory (Prisma ignores them)."""
        names = {m.name for m in self.local}
        return [r for r in self.rows if r.applied and r.migration_name not in names]

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.failed or self.edited)

    def _rows(self, name: str) -> list[MigrationRow]:
        return [r for r in self.rows if r.migration_name == name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table_exists": self.table_exists,
            "migrations": [m.name for m in self.local],
            "applied": self.applied,
            "pending": [
                {
                    "name": m.name,
                    "onlineschema_migration": self.unfinished.get(m.name, (None, None))[0],
                    "onlineschema_state": self.unfinished.get(m.name, (None, None))[1],
                }
                for m in self.pending
            ],
            "failed": [r.to_dict() for r in self.failed],
            "edited": [
                {"name": e.name, "recorded_checksum": e.recorded, "file_checksum": e.current}
                for e in self.edited
            ],
            "missing_locally": [r.to_dict() for r in self.missing_locally],
            "up_to_date": self.up_to_date,
        }


def state_name(migration: str) -> str:
    """The onlineschema migration that runs Prisma migration ``migration``."""
    return STATE_PREFIX + migration


def _current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise Refused(
            "the connection has no current schema (no schema of its search_path exists)",
            "create the schema Prisma uses (?schema= in the URL, default public), or fix"
            " the role's search_path",
        )
    return str(row[0])


def _table(schema: str) -> sql.Composable:
    return sql.Identifier(schema, MIGRATIONS_TABLE)


def _table_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p'))",
        (schema, MIGRATIONS_TABLE),
    ).fetchone()
    return bool(row and row[0])


def read_history(
    conn: psycopg.Connection[Any],
    local: Sequence[LocalMigration],
    *,
    state_schema: str = "onlineschema",
) -> History:
    """Read ``_prisma_migrations`` (ordered by ``started_at``, as the engine reads it) in
    the connection's schema, and the onlineschema state of unfinished deploys."""
    schema = _current_schema(conn)
    rows: list[MigrationRow] = []
    exists = _table_exists(conn, schema)
    if exists:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at,"
                    " started_at, applied_steps_count FROM {} ORDER BY started_at ASC"
                ).format(_table(schema))
            )
            rows = [MigrationRow(**r) for r in cur.fetchall()]
    history = History(schema, list(local), rows, exists)
    # through the executor: a state schema written by a newer release is refused
    with Executor(conn, Settings(state_schema=state_schema)) as ex:
        for m in history.pending:
            row = ex.record(state_name(m.name))
            if row is not None and row["state"] != MigrationState.ABORTED:
                history.unfinished[m.name] = (row["name"], row["state"])
    return history


def status(dsn: str, directory: str | Path, *, state_schema: str = "onlineschema") -> History:
    """Compare the migrations directory with the database. Changes nothing."""
    local = read_migrations(directory)
    conn = open_dsn(libpq_dsn(dsn))
    try:
        return read_history(conn, local, state_schema=state_schema)
    finally:
        conn.close()


# --- deploy ---------------------------------------------------------------------------


@dataclass
class AppliedMigration:
    name: str
    #: the onlineschema migration that ran it (None: nothing to run, only recorded)
    onlineschema_name: str | None
    result: Result | None
    #: True when an earlier, interrupted deploy had already started (or finished) it
    resumed: bool
    checksum: str


@dataclass
class DeployResult:
    schema: str
    applied: list[AppliedMigration]
    edited: list[Edited]
    missing_locally: list[MigrationRow]
    seconds: float


#: runs ``work`` (an Executor call for migration ``name``); the CLI passes one that
#: draws progress bars and turns Ctrl-C into a resumable stop
Runner = Callable[[Executor, str, Callable[[], Result]], Result]


def _direct(_ex: Executor, _name: str, work: Callable[[], Result]) -> Result:
    return work()


def deploy(
    dsn: str,
    directory: str | Path,
    settings: Settings | None = None,
    *,
    allow_raw: bool = False,
    workers: int | None = None,
    lock_wait: float = LOCK_WAIT,
    run: Runner = _direct,
    echo: Callable[[str], None] | None = None,
) -> DeployResult:
    """Apply the pending migrations of a Prisma migrations directory online and record
    each in ``_prisma_migrations`` as ``prisma migrate deploy`` does (see the module
    docstring). Running it again after a stop (exit 3), an error or a kill resumes.

    ``workers``: parallel backfill workers (see :meth:`Executor.apply`). ``lock_wait``:
    how long to wait for Prisma Migrate's advisory lock. ``run`` wraps each Executor call
    (the CLI draws progress bars there). ``echo`` receives one human-readable line per
    event (warnings, each applied migration); everything is also logged.

    >>> from onlineschema.integrations import prisma                    # doctest: +SKIP
    >>> prisma.deploy("postgresql://app@db/app", "prisma/migrations")    # doctest: +SKIP
    """
    settings = settings or Settings()
    say = echo or (lambda _text: None)
    t0 = time.monotonic()
    local = read_migrations(directory)
    target = libpq_dsn(dsn)
    with Executor(target, settings) as ex, _migrate_lock(target, lock_wait):
        history = read_history(ex.conn, local, state_schema=settings.state_schema)
        schema = history.schema
        if history.failed:
            raise Refused(_failed_text(history.failed), _failed_fix(history.failed))
        if not history.table_exists:
            _refuse_not_empty(ex.conn, schema)
        for e in history.edited:
            log.warning(
                "prisma_migration_edited", migration=e.name, recorded=e.recorded, file=e.current
            )
            say(
                f"warning: migration {e.name} was applied, but its migration.sql changed"
                f" since (checksum {e.recorded[:12]}… recorded, {e.current[:12]}… now);"
                " the change is NOT applied: write a new migration for it"
            )
        for r in history.missing_locally:
            say(
                f"note: migration {r.migration_name} is recorded in {MIGRATIONS_TABLE} but"
                " has no directory here"
            )
        # every pending migration is translated before anything runs
        prepared = [(m, _changes(m, allow_raw)) for m in history.pending]
        if not history.table_exists:
            with ex.conn.transaction():
                ex.conn.execute(sql.SQL(_CREATE_TABLE).format(table=_table(schema)))
            log.info("prisma_migrations_table_created", schema=schema)
        applied = []
        for m, changes in prepared:
            applied.append(_apply_one(ex, schema, m, changes, run, workers))
            a = applied[-1]
            res = a.result
            how = (
                "nothing to run"
                if res is None
                else f"{res.steps_run} step(s) run online in {res.seconds:.1f}s"
            )
            say(f"applied {m.name} ({how}{', resumed' if a.resumed else ''})")
        return DeployResult(
            schema, applied, history.edited, history.missing_locally, time.monotonic() - t0
        )


def _changes(m: LocalMigration, allow_raw: bool) -> list[Change]:
    import pglast

    from ..sqlinput import parse_sql

    text = m.text()
    with contextlib.suppress(pglast.parser.ParseError):  # parse_sql explains it below
        if not pglast.parse_sql(text):
            return []  # empty, or comments only
    try:
        return parse_sql(text, allow_raw=allow_raw)
    except Refused as exc:
        raise _in_migration(exc, m.name) from None


def _in_migration(exc: Refused, name: str) -> Refused:
    problem = f"Prisma migration {name}: {exc.problem}"
    if isinstance(exc, UnsupportedStatement):
        return UnsupportedStatement(problem, exc.fix)
    return Refused(problem, exc.fix)


def _apply_one(
    ex: Executor,
    schema: str,
    m: LocalMigration,
    changes: Sequence[Change],
    run: Runner,
    workers: int | None,
) -> AppliedMigration:
    name = state_name(m.name)
    bound = log.bind(prisma_migration=m.name, migration=name)
    row = ex.record(name)
    if row is not None and row["state"] == MigrationState.ABORTED:
        # undone with `onlineschema abort`: deploying it again starts it afresh
        bound.info("prisma_restart_aborted")
        ex.forget(name)
        row = None
    if row is not None and row["changes_hash"] != changes_hash(changes):
        raise Refused(
            f"Prisma migration {m.name}: its migration.sql changed since an earlier deploy"
            f" started it (onlineschema migration {name} is {row['state']})",
            "restore the file as it was and deploy again to finish and record it, or undo"
            f" what it did with `onlineschema abort {name}` and deploy again to start it"
            " afresh",
        )
    resumed = row is not None
    started = _now(ex.conn)
    result: Result | None = None
    if changes:
        bound.info("prisma_migration_started", resumed=resumed)

        def work() -> Result:
            # migration.sql asks for the whole change now, contract phase included
            return apply_through_contract(ex, changes, name, workers=workers)

        try:
            result = run(ex, name, work)
        except Refused as exc:
            raise _in_migration(exc, m.name) from None
        if result.state != "completed":
            raise OnlineSchemaError(
                f"Prisma migration {m.name}: onlineschema migration {name} is {result.state},"
                " not completed; it was not recorded in _prisma_migrations"
            )
        state_row = ex.record(name)
        if state_row is not None:
            started = state_row["created_at"]
    with ex.conn.transaction(), ex.conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE migration_name = %s AND rolled_back_at IS NULL"
            ).format(_table(schema)),
            (m.name,),
        )
        got = cur.fetchone()
        if got is not None and got[0]:
            # cannot happen under the advisory lock, unless a tool ignores it
            raise OnlineSchemaError(
                f"Prisma migration {m.name} was recorded in {MIGRATIONS_TABLE} by someone else"
                " while it ran (a tool that does not take Prisma Migrate's advisory lock?)"
            )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (id, checksum, finished_at, migration_name, logs,"
                " rolled_back_at, started_at, applied_steps_count)"
                " VALUES (%s, %s, clock_timestamp(), %s, NULL, NULL, %s, 1)"
            ).format(_table(schema)),
            (str(uuid.uuid4()), m.checksum, m.name, started),
        )
        if changes:
            ex.forget(name)
    bound.info("prisma_migration_recorded", checksum=m.checksum)
    return AppliedMigration(m.name, name if changes else None, result, resumed, m.checksum)


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, datetime)
    return value


def _failed_text(failed: Sequence[MigrationRow]) -> str:
    lines = [
        "migrate found failed migrations in the target database, new migrations will not be"
        " applied (Prisma's P3009):"
    ]
    for r in failed:
        lines.append(
            f"  - {r.migration_name}, started at {r.started_at:%Y-%m-%d %H:%M:%S %Z}, has no"
            " finished_at and no rolled_back_at"
        )
    return "\n".join(lines)


def _failed_fix(failed: Sequence[MigrationRow]) -> str:
    name = failed[0].migration_name
    return (
        f"find out what the failed migration changed, then `npx prisma migrate resolve"
        f' --rolled-back "{name}"` if you undid it (deploy runs it again), or'
        f' `npx prisma migrate resolve --applied "{name}"` if you finished it by hand;'
        f" see {_RESOLVE}"
    )


def _refuse_not_empty(conn: psycopg.Connection[Any], schema: str) -> None:
    row = conn.execute(
        "SELECT string_agg(c.relname, ', ' ORDER BY c.relname), count(*)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema,),
    ).fetchone()
    if row is not None and row[1]:
        raise Refused(
            f"schema {schema} has tables ({_shorten(row[0])}) but no {MIGRATIONS_TABLE}:"
            " the database schema is not empty (Prisma's P3005)",
            "baseline it first: `npx prisma migrate resolve --applied <name>` for each"
            " migration already in the database (https://pris.ly/d/migrate-baseline)",
        )


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Prisma Migrate's advisory lock ----------------------------------------------------


@contextlib.contextmanager
def _migrate_lock(dsn: str, wait: float) -> Iterator[None]:
    """Hold ``pg_advisory_lock(72707369)`` on a session of its own for the block."""
    conn = open_dsn(dsn, application_name="onlineschema-prisma-lock")
    try:
        if is_pooled(conn):
            raise Refused(
                "Prisma Migrate's lock (the session advisory lock pg_advisory_lock(72707369)"
                " that keeps `prisma migrate deploy` off meanwhile) cannot be held through a"
                " transaction pooler: each statement may run on another server connection",
                "give the direct connection to the database (Prisma's directUrl, not the"
                " PgBouncer URL) in --dsn / DATABASE_URL",
            )
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (ms(wait),))
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        except pgerr.LockNotAvailable:
            raise _lock_busy(conn, wait) from None
        conn.execute("RESET lock_timeout")
        log.debug("prisma_lock_acquired", key=ADVISORY_LOCK_KEY)
        try:
            yield
        finally:
            if not conn.closed and not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    finally:
        conn.close()


def _lock_busy(conn: psycopg.Connection[Any], wait: float) -> Refused:
    who = ""
    with contextlib.suppress(psycopg.Error):
        row = conn.execute(
            "SELECT l.pid, a.application_name, a.state FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0"
            " AND l.objid = %s AND l.objsubid = 1 AND l.database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())",
            (ADVISORY_LOCK_KEY,),
        ).fetchone()
        if row is not None:
            who = f" (database session pid {row[0]}, application {row[1] or '?'}, {row[2] or '?'})"
    return Refused(
        f"another Prisma Migrate run holds its advisory lock {ADVISORY_LOCK_KEY}{who}; waited"
        f" {wait:g}s for it (Prisma's P1002)",
        "let the other `prisma migrate deploy` / `onlineschema prisma deploy` finish, then"
        " run deploy again (or wait longer with --lock-wait)",
    )
