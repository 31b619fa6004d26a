"""The schema editor that runs each Django migration as one online onlineschema migration.

Django's PostgreSQL editor already renders every operation as final SQL strings and
hands them to ``execute()``. This editor keeps them instead of running them, and when
the migration's ``with connection.schema_editor()`` block ends it reads them with the
SQL front end (:func:`onlineschema.sqlinput.parse_sql`), plans them as one migration
named ``django:<app>.<migration>`` and runs the plan with the same executor as the CLI:
short lock timeouts with retries, indexes built concurrently, constraints added NOT
VALID then validated, ``UPDATE``\\ s of a ``RunSQL`` as batched exactly-once backfills.

Order is kept: before anything Django must run itself (a ``RunPython`` that queries the
database, a ``RunSQL`` statement the front end does not translate) the statements kept
so far are run online as a part of their own (``django:<app>.<migration>#2``, ``#3``,
...), then Django's statement runs as Django would run it. Such a migration is first read
whole in collect mode (as ``sqlmigrate`` reads it), so that SQL with no online form is
refused before its first part changes anything.

Django writes the ``django_migrations`` row after ``__exit__`` returns when
``deferred_sql`` is not empty (``MigrationExecutor.apply_migration``): this editor keeps
a marker in it, so the row is written only once the online run finished; a stop
(lock budget spent, pause, SIGKILL) leaves the migration unrecorded and ``migrate``
again resumes the stored plan, exactly once.

Django passes the editor no reference to the migration it runs; the editor finds it in
the calling frames (``MigrationExecutor.apply_migration`` / ``unapply_migration``,
``MigrationLoader.collect_sql``, ``Migration.apply`` / ``unapply``). An editor opened
anywhere else (``--run-syncdb``, test database creation, ``connection.schema_editor()``
in user code) behaves exactly like Django's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import CodeType, FrameType
from typing import Any

import psycopg
import structlog
from django.core.management.base import CommandError
from django.db.backends.postgresql.schema import DatabaseSchemaEditor as PostgresSchemaEditor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.operations.special import RunPython, RunSQL
from django.db.migrations.recorder import MigrationRecorder
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from ..changes import Change
from ..connection import open_dsn
from ..errors import LockBudgetExhausted, OnlineSchemaError, Paused, Refused, UnsupportedStatement
from ..executor import Executor, MigrationState, apply_through_contract, changes_hash
from ..executor.script import render_sql_script
from ..sqlinput import parse_sql
from .conf import DjangoSettings, read_settings

__all__ = [
    "RECORD_AFTER_EXIT",
    "DatabaseSchemaEditor",
    "MigrationRun",
    "OnlineMigrationError",
    "OnlineSchemaEditorMixin",
]

log = structlog.stdlib.get_logger("onlineschema.django")

#: kept in ``deferred_sql``: Django then records the migration after ``__exit__``
RECORD_AFTER_EXIT = "-- onlineschema: recorded once the online run has finished"

#: how many frames up from ``__enter__`` the migration executor may be
_MAX_DEPTH = 6

_RUN_FRAMES: dict[CodeType, str] = {
    Migration.apply.__code__: "apply",
    Migration.unapply.__code__: "unapply",
}
_RUNSQL_CODES = frozenset({RunSQL._run_sql.__code__})
_RUNPYTHON_CODES = frozenset(
    {RunPython.database_forwards.__code__, RunPython.database_backwards.__code__}
)
_COLLECT_CODE = MigrationLoader.collect_sql.__code__
_RUNPYTHON_MARK = "-- THIS OPERATION CANNOT BE WRITTEN AS SQL"


class OnlineMigrationError(CommandError):  # type: ignore[misc]
    """A Django migration that onlineschema refused, stopped or failed.

    ``manage.py migrate`` prints the message (no traceback) and exits with
    ``exit_code``: 2 refused before any DDL of the migration ran, 3 stopped and
    resumable (run ``migrate`` again), 1 other. ``error`` is the onlineschema error."""

    def __init__(self, message: str, error: OnlineSchemaError) -> None:
        super().__init__(message, returncode=error.exit_code)
        self.error = error
        self.exit_code = error.exit_code


@dataclass(frozen=True)
class MigrationRun:
    """The Django migration an editor runs, and in which direction."""

    app_label: str
    name: str
    backwards: bool = False
    atomic: bool = True

    @property
    def label(self) -> str:
        return f"{self.app_label}.{self.name}"

    def part_name(self, part: int) -> str:
        """The onlineschema migration name of part ``part`` (1, 2, ...)."""
        base = f"django:{self.label}" + (":unapply" if self.backwards else "")
        return base if part == 1 else f"{base}#{part}"

    def owns(self, name: str) -> bool:
        base = self.part_name(1)
        return name == base or name.startswith(base + "#")

    def finished_before(
        self,
        name: str,
        existing: dict[str, Any],
        changes: Sequence[Change],
        settings: DjangoSettings,
        conn: psycopg.Connection[Any],
    ) -> bool:
        """An earlier run left ``existing``, the record of part ``name``: True when that
        part completed (a crash kept Django from recording it); refused when it was
        aborted or started with other SQL; False when it is to be resumed."""
        if existing["state"] == MigrationState.COMPLETED:
            log.info("django_part_already_completed", migration=name)
            return True
        if existing["state"] == MigrationState.ABORTED:
            delete = (
                sql.SQL("DELETE FROM {} WHERE name = {}")
                .format(
                    sql.Identifier(settings.executor.state_schema, "migrations"),
                    sql.Literal(name),
                )
                .as_string(conn)
            )
            raise Refused(
                f"onlineschema migration {name!r} was aborted (what it created"
                " was removed; rows a backfill already updated stay updated)",
                "to run the Django migration again from the start, delete the"
                f" record ({delete}) once re-running its backfills is safe, then"
                " `migrate`; or"
                f" change the schema yourself and `manage.py migrate"
                f" {self.app_label} {self.name} --fake`",
            )
        if existing["changes_hash"] != changes_hash(changes):
            raise Refused(
                f"onlineschema migration {name!r} was started"
                f" ({existing['state']}) with other SQL than Django generates for"
                " it now (the migration file changed, or Django read the catalog"
                " the first run already changed)",
                f"finish the stored plan with `onlineschema resume {name}` and"
                f" record it with `manage.py migrate {self.app_label}"
                f" {self.name} --fake`, or undo it with `onlineschema abort"
                f" {name}` and run `migrate` again",
            )
        return False


@dataclass
class _Entry:
    """One statement Django sent, with what it means."""

    sql: str
    operation: str  # the operation's describe(), for messages
    changes: list[Change] = field(default_factory=list)
    #: run as Django would (a RunSQL statement the front end does not translate),
    #: or the place of a RunPython (sqlmigrate)
    plain: bool = False
    python: bool = False


def _frames(start: FrameType | None) -> Iterator[FrameType]:
    frame = start
    while frame is not None:
        yield frame
        frame = frame.f_back


@dataclass
class Found:
    """What the frames that opened the editor say about the migration being run."""

    run: MigrationRun
    migration: Any = None
    #: the project state before the migration (None under sqlmigrate)
    state: Any = None
    #: the MigrationExecutor (one per ``migrate`` command)
    executor: Any = None


def find_migration(start: FrameType | None) -> Found | None:
    """The migration whose ``with connection.schema_editor()`` called us, if any."""
    for depth, frame in enumerate(_frames(start)):
        if depth > _MAX_DEPTH:
            return None
        name = frame.f_code.co_name
        migration = frame.f_locals.get("migration")
        if not isinstance(migration, Migration):
            continue
        if name in ("apply_migration", "unapply_migration") or frame.f_code is _COLLECT_CODE:
            collecting = frame.f_code is _COLLECT_CODE
            backwards = name == "unapply_migration" or (
                collecting and bool(frame.f_locals.get("backwards"))
            )
            run = MigrationRun(
                migration.app_label, migration.name, backwards, bool(migration.atomic)
            )
            if collecting:
                return Found(run, migration)
            return Found(run, migration, frame.f_locals.get("state"), frame.f_locals.get("self"))
    return None


def _splits(operations: Any) -> bool:
    """Does the migration run something itself between online parts?"""
    for op in operations:
        if isinstance(op, (RunPython, RunSQL)):
            return True
        if _splits(getattr(op, "database_operations", ())):
            return True
    return False


def _current_operation(start: FrameType | None) -> tuple[str, bool, bool]:
    """(describe() of the operation running, inside RunSQL, inside RunPython)."""
    in_sql = in_python = False
    for frame in _frames(start):
        code = frame.f_code
        in_sql = in_sql or code in _RUNSQL_CODES
        in_python = in_python or code in _RUNPYTHON_CODES
        if code in _RUN_FRAMES:
            op = frame.f_locals.get("operation")
            what = op.describe() if op is not None and hasattr(op, "describe") else "?"
            return str(what), in_sql, in_python
    return "deferred SQL of the migration", in_sql, in_python


class _Collected(list[Any]):
    """``collected_sql`` under ``sqlmigrate``: notes where a RunPython sits."""

    def __init__(self, editor: OnlineSchemaEditorMixin) -> None:
        super().__init__()
        self.editor = editor
        self.last_description = ""

    def append(self, item: Any) -> None:
        text = str(item)
        if text.startswith("-- ") and text != _RUNPYTHON_MARK:
            self.last_description = text[3:]
        if text == _RUNPYTHON_MARK:
            self.editor._buffer.append(_Entry("", self.last_description, plain=True, python=True))
        super().append(item)


class OnlineSchemaEditorMixin:
    """Mix into a PostgreSQL schema editor (Django's, PostGIS's) to run migrations online.

    ``class Editor(OnlineSchemaEditorMixin, PostGISSchemaEditor): pass``
    """

    # attributes of Django's editor this mixin uses (it is mixed into one)
    connection: Any
    collect_sql: bool
    collected_sql: list[Any]
    deferred_sql: list[Any]
    atomic_migration: bool

    def __init__(self, connection: Any, collect_sql: bool = False, atomic: bool = True) -> None:
        super().__init__(connection, collect_sql=collect_sql, atomic=atomic)  # type: ignore[call-arg]
        self._run: MigrationRun | None = None
        self._settings = DjangoSettings()
        self._buffer: list[_Entry] = []
        self._part = 0
        self._plain = False
        self._wrapper: Callable[..., Any] | None = None
        #: set on the editor that only reads a migration's SQL to check it
        self._check_only: MigrationRun | None = None
        #: something of this migration ran already (a part, RunSQL as written, RunPython)
        self._changed = False

    # --- the editor's lifetime -------------------------------------------------------

    def __enter__(self) -> Any:
        found = None
        if self._check_only is not None:
            found = Found(self._check_only)
        elif not getattr(self.connection, "onlineschema_plain", False):
            found = find_migration(sys._getframe(1))
        if found is not None:
            self._run = found.run
            try:
                self._settings = read_settings(self.connection.settings_dict, self.connection.alias)
            except Refused as exc:
                raise self._error(exc) from None
            if not self.collect_sql and self._fresh_database(found):
                found = self._run = None
        if found is not None and not self.collect_sql:
            # each step commits on its own; CONCURRENTLY cannot run in a transaction
            self.atomic_migration = False
            if (
                found.migration is not None
                and found.state is not None
                and _splits(found.migration.operations)
            ):
                self._check_whole_migration(found.run, found.migration, found.state)
        editor = super().__enter__()  # type: ignore[misc]
        if self._run is not None:
            if self.collect_sql:
                self.collected_sql = _Collected(self)
            else:
                self.deferred_sql.append(RECORD_AFTER_EXIT)
            self._wrapper = self._before_query
            self.connection.execute_wrappers.append(self._wrapper)
        return editor

    def _fresh_database(self, found: Found) -> bool:
        """Does this ``migrate`` run on a database where no migration was ever applied?
        Then nothing can be using its schema yet: Django's plain DDL is safe (and the
        SQL front end need not accept everything Django's own apps' migrations do).
        Decided once per ``migrate`` (per MigrationExecutor)."""
        if not self._settings.plain_fresh_database or found.executor is None:
            return False
        decided = getattr(found.executor, "onlineschema_fresh", None)
        if decided is None:
            recorder = MigrationRecorder(self.connection)
            decided = not recorder.has_table() or not recorder.migration_qs.exists()
            found.executor.onlineschema_fresh = decided
            if decided:
                log.info("django_fresh_database_plain_ddl", database=self.connection.alias)
        return bool(decided)

    def _check_whole_migration(self, run: MigrationRun, migration: Any, state: Any) -> None:
        """A migration that runs in parts is read whole first (as sqlmigrate reads it), so
        that SQL with no online form is refused before any part changes anything."""
        checker = type(self)(self.connection, collect_sql=True, atomic=False)
        checker._check_only = run
        with checker:
            if run.backwards:
                migration.unapply(state.clone(), checker, collect_sql=True)
            else:
                migration.apply(state.clone(), checker, collect_sql=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._run is None:
            super().__exit__(exc_type, exc, tb)  # type: ignore[misc]
            return
        try:
            if exc_type is None:
                for statement in self.deferred_sql:
                    if statement is not RECORD_AFTER_EXIT:
                        self.execute(statement, None)
                self.deferred_sql = []
                if self._check_only is not None:
                    self._buffer = []
                elif self.collect_sql:
                    self._render_collected()
                else:
                    self._flush()
                    self._forget_other_direction()
            self.deferred_sql = []
        finally:
            if self._wrapper is not None and self._wrapper in self.connection.execute_wrappers:
                self.connection.execute_wrappers.remove(self._wrapper)
            self._wrapper = None
            super().__exit__(exc_type, exc, tb)  # type: ignore[misc]

    # --- statements ----------------------------------------------------------------

    def execute(self, sql: Any, params: Any = ()) -> None:
        if self._run is None or self._plain:
            super().execute(sql, params)  # type: ignore[misc]
            return
        # PostgreSQL's editor merges parameters client-side: the same final string
        text = str(sql) if params is None else self.connection.ops.compose_sql(str(sql), params)
        operation, in_runsql, _ = _current_operation(sys._getframe(1))
        if in_runsql:
            try:
                changes = parse_sql(text)
            except UnsupportedStatement:
                changes = []
            if not changes:
                # not translated (or only SET/BEGIN/...): Django runs it, in order
                self._run_as_django(text, operation)
                return
        else:
            try:
                changes = parse_sql(text)
            except Refused as exc:
                raise self._error(exc, operation) from None
        self._buffer.append(_Entry(text, operation, changes))

    def _run_as_django(self, text: str, operation: str) -> None:
        if self.collect_sql:
            self._buffer.append(_Entry(text, operation, plain=True))
            return
        self._flush()
        log.info("django_runsql_as_written", migration=self._label(), sql=text[:200])
        self._plain = True
        self._changed = True
        try:
            super().execute(text, None)  # type: ignore[misc]
        finally:
            self._plain = False

    def _before_query(self, execute: Any, sql: Any, params: Any, many: Any, context: Any) -> Any:
        """Django's execute wrapper: a RunPython's first query runs what is kept first."""
        if not self._plain and not self.collect_sql:
            _, _, in_python = _current_operation(sys._getframe(1))
            if in_python:
                self._flush()
                self._changed = True
        return execute(sql, params, many, context)

    # --- running online --------------------------------------------------------------

    def _label(self) -> str:
        return self._run.label if self._run else "?"

    def _error(self, exc: OnlineSchemaError, operation: str | None = None) -> OnlineMigrationError:
        assert self._run is not None
        run = self._run
        where = f"Django migration {run.label}" + (" (backwards)" if run.backwards else "")
        if operation:
            where += f", operation {operation!r}"
        if isinstance(exc, Refused):
            when = (
                "was refused (what ran of it before stays; it is not recorded as applied)"
                if self._changed
                else "was refused before it changed anything"
            )
            text = f"{where} {when}: {exc.problem}"
            if exc.fix:
                text += f"\n  fix: {exc.fix}"
            if isinstance(exc, UnsupportedStatement):
                text += (
                    "\n  In a Django migration: wrap the operation in"
                    " migrations.SeparateDatabaseAndState with a RunSQL of supported"
                    " statements, or run the change yourself and record it with"
                    f" `manage.py migrate {run.app_label} {run.name} --fake`."
                )
        elif isinstance(exc, (LockBudgetExhausted, Paused)):
            text = (
                f"{where} stopped and is resumable: {exc}\n  Run `manage.py migrate` again"
                f" to resume it where it stopped (onlineschema migration"
                f" {run.part_name(max(self._part, 1))!r}); it is not recorded as applied."
            )
        else:
            text = (
                f"{where} failed: {exc}\n  It is not recorded as applied; see"
                f" `onlineschema status {run.part_name(max(self._part, 1))}`."
            )
        return OnlineMigrationError(text, exc)

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of our own, with the Django connection's parameters: Django's
        registers its own loaders (jsonb as text) that the executor does not expect."""
        params = self.connection.get_connection_params()
        keywords = {o.keyword.decode() for o in pq.Conninfo.get_defaults()}
        conninfo = make_conninfo(
            "", **{k: v for k, v in params.items() if k in keywords and v is not None}
        )
        conn = open_dsn(conninfo)
        role = self.connection.settings_dict.get("OPTIONS", {}).get("assume_role")
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        return conn

    def _check_not_in_transaction(self) -> None:
        # psycopg 3 and psycopg2 both have info.transaction_status, 0 = idle
        status = getattr(getattr(self.connection.connection, "info", None), "transaction_status", 0)
        if int(status) != pq.TransactionStatus.IDLE:
            raise self._error(
                Refused(
                    "the migration runs inside an open transaction on Django's connection;"
                    " onlineschema commits each step on its own, and the open transaction"
                    " would hold locks its steps wait for",
                    "run `migrate` outside transaction.atomic() (and outside a TestCase)",
                )
            )

    def _flush(self) -> None:
        """Plan and run online, as the next part, every statement kept so far."""
        if not self._buffer:
            return
        assert self._run is not None
        entries, self._buffer = self._buffer, []
        changes = [c for e in entries for c in e.changes]
        if not changes:
            return
        self._check_not_in_transaction()
        self._part += 1
        name = self._run.part_name(self._part)
        conn = self._connect()
        try:
            with Executor(conn, self._settings.executor) as ex:
                existing = ex.record(name)
                if existing is not None:
                    self._changed = True  # by an earlier run of this migration
                    if self._run.finished_before(name, existing, changes, self._settings, conn):
                        return
                log.info(
                    "django_migration_part",
                    migration=name,
                    django=self._run.label,
                    statements=len(entries),
                    resuming=existing is not None,
                )
                result = apply_through_contract(
                    ex,
                    changes,
                    name,
                    workers=self._settings.workers,
                    contract=self._settings.contract == "immediately",
                )
                self._changed = True
                if result.state == "awaiting_contract":
                    log.warning(
                        "django_migration_awaiting_contract",
                        migration=name,
                        django=self._run.label,
                        then=f"once no running code uses the old shape: onlineschema contract {name}",
                    )
        except OnlineSchemaError as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()

    def _forget_other_direction(self) -> None:
        """Once applied (unapplied), forget the finished unapply (apply) runs, so that the
        next run the other way starts afresh rather than counting as done."""
        assert self._run is not None
        other = replace(self._run, backwards=not self._run.backwards)
        conn = self._connect()
        try:
            with Executor(conn, self._settings.executor) as ex:
                for row in ex.status():
                    if not other.owns(row["name"]):
                        continue
                    if MigrationState(row["state"]).finished:
                        ex.forget(row["name"])
                    else:
                        log.warning(
                            "django_other_direction_unfinished",
                            migration=row["name"],
                            state=row["state"],
                        )
        finally:
            conn.close()

    # --- sqlmigrate ------------------------------------------------------------------

    def _render_collected(self) -> None:
        """``collected_sql`` becomes the online plan as a script (the parts, with what
        Django runs itself between them), the way ``onlineschema plan --format sql``
        renders it."""
        assert self._run is not None
        run, s = self._run, self._settings.executor
        out: list[str] = [
            f"-- onlineschema: Django migration {run.label}"
            + (" (backwards)" if run.backwards else "")
            + " runs online, as planned below against the database as it is now.",
            "-- `manage.py migrate` runs this plan (with retries and batched backfills);",
            "-- the script is for reading, or for psql when migrate cannot be used.",
        ]
        wrapped = run.atomic and self.connection.features.can_rollback_ddl
        if wrapped:
            out.append("COMMIT;  -- sqlmigrate's BEGIN: each step below is its own transaction")
        part, group = 0, list[_Entry]()

        def flush_group() -> None:
            nonlocal part, group
            changes = [c for e in group for c in e.changes]
            if not changes:
                group = []
                return
            part += 1
            name = run.part_name(part)
            out.append("")
            out.append(f"-- part {part}: onlineschema migration {name!r}")
            try:
                conn = self._connect()
                try:
                    with Executor(conn, s) as ex:
                        plan = ex.plan(changes)
                finally:
                    conn.close()
            except Refused as exc:
                # e.g. the migration is already applied, or an earlier part has not run:
                # sqlmigrate is for reading, so say why and show Django's SQL instead
                why = (
                    "is it already applied?"
                    if part == 1
                    else "it can be planned only once the parts above have run"
                )
                out.append(
                    "-- CANNOT BE PLANNED against the database as it is now"
                    f" ({why}); `migrate` refuses it while this holds:"
                )
                out.extend(f"--   {line}" for line in str(exc).splitlines())
                out.append("-- Django's SQL for this part:")
                out.extend(f"--   {line}" for e in group for line in e.sql.splitlines())
                group = []
                return
            for note in plan.notes:
                out.append(f"-- note: {note}")
            out.append(
                render_sql_script(plan.steps, s)
            )
            group = []

        for entry in self._buffer:
            if not entry.plain:
                group.append(entry)
                continue
            flush_group()
            out.append("")
            if entry.python:
                out.append(f"-- {entry.operation}: RunPython, run by Django at this point")
            else:
                out.append(f"-- {entry.operation}: run as written by Django at this point")
                out.append(entry.sql if entry.sql.rstrip().endswith(";") else entry.sql + ";")
        flush_group()
        if part == 0 and not any(e.plain for e in self._buffer):
            out.append("-- (no schema change)")
        self._buffer = []
        if wrapped:
            out.append("BEGIN;  -- for sqlmigrate's COMMIT")
        self.collected_sql = out


class DatabaseSchemaEditor(OnlineSchemaEditorMixin, PostgresSchemaEditor):  # type: ignore[misc]
    """Django's PostgreSQL schema editor, running migrations online."""
