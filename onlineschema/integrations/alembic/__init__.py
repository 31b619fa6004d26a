"""Alembic integration: run onlineschema migrations from Alembic revisions.

One Alembic operation, :class:`OnlineMigrateOp`, registered with Alembic's plugin API
(``Operations.register_operation`` / ``Operations.implementation_for``), carries a
migration name, its changes (any change of :mod:`onlineschema.changes`, or a SQL
snippet read by :func:`onlineschema.sqlinput.parse_sql`) and a phase:

* ``"run"``: plan and run every phase (the same as ``onlineschema apply``);
* ``"expand"``: run expand, backfill and validate, then stop with the migration
  ``awaiting_contract``; a later revision runs ``"contract"`` by name;
* ``"contract"``: run the contract phase of a migration an earlier revision expanded;
* ``"abort"``: undo an unfinished or expanded migration (for ``downgrade()``).

Typed entry points for revision files (they pass ``mypy --strict``, the dynamic
``op.online_migrate(...)`` attribute does not)::

    from alembic import op
    from onlineschema import AddColumn
    from onlineschema.alembic import run

    def upgrade() -> None:
        run(op, "orders_status", [AddColumn("orders", "status", "text", default="'new'")])

**Online** (``alembic upgrade``), the operation commits the revision's transaction
through ``MigrationContext.autocommit_block()`` and runs the same
:class:`~onlineschema.executor.Executor` as the CLI on the migration's own connection:
one short transaction per step, ``CONCURRENTLY`` outside transactions, lock timeouts
retried, state in the ``onlineschema`` schema. Alembic writes the revision's
``alembic_version`` row after ``upgrade()`` returns, in a new transaction: if the run
stops (lock budget spent, a crash, SIGKILL) the row is not written, and ``alembic
upgrade`` again resumes the migration where it stopped. When a migration finishes, its
record in the ``onlineschema`` schema is deleted *in the transaction that writes the
``alembic_version`` row* (Alembic's ``on_version_apply`` hook), so the two never
disagree and a revision upgraded again after a downgrade starts afresh.

``env.py`` must call ``context.configure(..., transaction_per_migration=True)`` on a
connection that is not inside a transaction; otherwise the operation refuses before any
DDL with a message saying what to change (:func:`check_environment`).

**Offline** (``alembic upgrade --sql``) there is no database: the changes are planned
against an *assumed* catalog (the tables, columns and constraints the changes name are
taken to exist as the changes need them; the server version comes from the dialect, the
``onlineschema_server_version`` option of ``context.configure()``, or defaults to 18) and
rendered with :func:`onlineschema.executor.script.render_sql_script`. The script's header says that
no preflight check ran. A batched backfill cannot be a SQL statement: it is rendered as
a marked ``onlineschema apply`` command that runs it online.

Settings (lock timeout, retries, backfill pacing) come from the operation's
``settings=``, else from ``context.configure(..., onlineschema_settings=Settings(...))``
in ``env.py``, else the defaults.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import Literal, cast

import psycopg
import structlog
from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext

from ... import recipes
from ...catalog import Catalog
from ...changes import Change
from ...errors import OnlineSchemaError, Refused, UnknownMigration
from ...executor import Executor, Result, Settings, changes_hash
from ...executor.lifecycle import (
    Command,
    MigrationState,
    Outcome,
    decide,
    hold_contract,
)
from ...executor.script import render_sql_script
from ...executor.steps import undo_steps, with_backfill_command
from ...plan import Plan, Step, StepKind
from ...planner import build_plan, catalog_request
from ...planner.assumed import AssumedSchema
from ...sqlinput import parse_sql
from ...state import StateStore

__all__ = [
    "DEFAULT_OFFLINE_SERVER_VERSION",
    "OnlineMigrateOp",
    "Phase",
    "abort",
    "assumed_catalog",
    "check_environment",
    "contract",
    "expand",
    "hold_contract",
    "render_offline",
    "run",
]

log = structlog.stdlib.get_logger("onlineschema.alembic")

Phase = Literal["run", "expand", "contract", "abort"]
PHASES: tuple[Phase, ...] = ("run", "expand", "contract", "abort")

#: PostgreSQL major version assumed by ``alembic upgrade --sql`` when nothing says otherwise
DEFAULT_OFFLINE_SERVER_VERSION = 18


OpTarget = Operations | MigrationContext | ModuleType


# --- the operation -------------------------------------------------------------------


@Operations.register_operation("online_migrate")
class OnlineMigrateOp(MigrateOperation):
    """Run onlineschema migration ``name`` from an Alembic revision.

    ``changes`` is a sequence of change objects or a SQL snippet (parsed at once by
    :func:`onlineschema.sqlinput.parse_sql`, ``allow_raw`` as there). For ``contract``
    and ``abort`` the changes are optional: online the stored plan is used (and, when
    given, the changes must match it); offline they are needed to render the script.

    In a revision's ``upgrade()``::

        op.invoke(OnlineMigrateOp("orders_note", [AddColumn("orders", "note", "text")]))
    """

    def __init__(
        self,
        name: str,
        changes: Sequence[Change] | str = (),
        *,
        phase: Phase = "run",
        settings: Settings | None = None,
        allow_raw: bool = False,
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
        if not name:
            raise ValueError("an onlineschema migration needs a name")
        if isinstance(changes, str):
            parsed: list[Change] = parse_sql(changes, allow_raw=allow_raw)
        else:
            parsed = list(changes)
            bad = [c for c in parsed if not isinstance(c, Change)]
            if bad:
                raise TypeError(
                    f"changes must be onlineschema Change objects or a SQL string, got {bad[0]!r}"
                )
        if phase in ("run", "expand") and not parsed:
            raise ValueError(f"phase {phase!r} needs the changes to make")
        self.name = name
        self.changes: tuple[Change, ...] = tuple(parsed)
        self.phase: Phase = phase
        self.settings = settings

    @classmethod
    def online_migrate(
        cls,
        operations: Operations,
        name: str,
        changes: Sequence[Change] | str = (),
        *,
        phase: Phase = "run",
        settings: Settings | None = None,
        allow_raw: bool = False,
    ) -> Result | None:
        """``op.online_migrate(name, changes, phase=...)``: the dynamic form of
        :class:`OnlineMigrateOp` (use :func:`run` and friends for type checking)."""
        op = cls(name, changes, phase=phase, settings=settings, allow_raw=allow_raw)
        return cast("Result | None", operations.invoke(op))

    def reverse(self) -> OnlineMigrateOp:
        """The downgrade of ``run``/``expand`` is ``abort`` (of an unfinished or expanded
        migration); ``contract`` and ``abort`` cannot be reversed."""
        if self.phase in ("run", "expand"):
            return OnlineMigrateOp(self.name, self.changes, phase="abort", settings=self.settings)
        raise NotImplementedError(f"the {self.phase} phase of a migration cannot be reversed")

    def describe(self) -> str:
        what = "; ".join(c.describe() for c in self.changes) or "(stored plan)"
        return f"onlineschema {self.phase} {self.name}: {what}"


@Operations.implementation_for(OnlineMigrateOp)
def _online_migrate(operations: Operations, operation: OnlineMigrateOp) -> Result | None:
    ctx = operations.get_context()
    settings = _settings(ctx, operation.settings)
    if ctx.as_sql:
        script = render_offline(
            operation.name,
            operation.changes,
            phase=operation.phase,
            settings=settings,
            server_version=offline_server_version(ctx),
        )
        with ctx.autocommit_block():  # --sql: COMMIT before, BEGIN after
            ctx.impl.static_output(script)
        return None
    return _run_online(ctx, operation, settings)


# --- typed entry points ----------------------------------------------------------------


def _operations(target: OpTarget) -> Operations:
    if isinstance(target, Operations):
        return target
    if isinstance(target, MigrationContext):
        return Operations(target)
    if isinstance(target, ModuleType) and callable(getattr(target, "get_context", None)):
        return Operations(cast(MigrationContext, target.get_context()))
    raise TypeError(
        f"expected alembic's `op`, an Operations or a MigrationContext, got {type(target)!r}"
    )


def _invoke(target: OpTarget, operation: OnlineMigrateOp) -> Result | None:
    return cast("Result | None", _operations(target).invoke(operation))


def run(
    op: OpTarget,
    name: str,
    changes: Sequence[Change] | str,
    *,
    settings: Settings | None = None,
    allow_raw: bool = False,
) -> Result | None:
    """Plan and run ``changes`` as migration ``name``, every phase, like
    ``onlineschema apply``. Returns the executor's result (``None`` with ``--sql``)."""
    return _invoke(
        op, OnlineMigrateOp(name, changes, phase="run", settings=settings, allow_raw=allow_raw)
    )


def expand(
    op: OpTarget,
    name: str,
    changes: Sequence[Change] | str,
    *,
    settings: Settings | None = None,
    allow_raw: bool = False,
) -> Result | None:
    """Run the expand, backfill and validate phases of ``changes`` as migration ``name``
    and leave it ``awaiting_contract``: a later revision calls :func:`contract`."""
    return _invoke(
        op, OnlineMigrateOp(name, changes, phase="expand", settings=settings, allow_raw=allow_raw)
    )


def contract(
    op: OpTarget,
    name: str,
    changes: Sequence[Change] | str = (),
    *,
    settings: Settings | None = None,
) -> Result | None:
    """Run the contract phase of migration ``name`` (expanded by an earlier revision).
    ``changes`` are needed only to render it with ``--sql``."""
    return _invoke(op, OnlineMigrateOp(name, changes, phase="contract", settings=settings))


def abort(
    op: OpTarget,
    name: str,
    changes: Sequence[Change] | str = (),
    *,
    settings: Settings | None = None,
) -> Result | None:
    """Undo migration ``name`` if it is unfinished or expanded (for ``downgrade()``).
    ``changes`` are needed only to render it with ``--sql``."""
    return _invoke(op, OnlineMigrateOp(name, changes, phase="abort", settings=settings))


# --- online ----------------------------------------------------------------------------


def _settings(ctx: MigrationContext, given: Settings | None) -> Settings:
    if given is not None:
        return given
    configured = ctx.opts.get("onlineschema_settings")
    if configured is None:
        return Settings()
    if not isinstance(configured, Settings):
        raise Refused(
            f"onlineschema_settings in context.configure() is a {type(configured).__name__}",
            "pass onlineschema_settings=onlineschema.Settings(...) in env.py",
        )
    return configured


def check_environment(ctx: MigrationContext) -> None:
    """Refuse (before any DDL) an Alembic setup in which the operation cannot run safely.

    ``autocommit_block()`` commits the migration's transaction: that is honest only
    with one transaction per revision, and possible only when Alembic itself began it.
    """
    problems: list[Refused] = []
    if ctx.dialect.name != "postgresql":
        problems.append(
            Refused(
                f"onlineschema runs on PostgreSQL; this Alembic context uses {ctx.dialect.name}",
                "point sqlalchemy.url at the PostgreSQL database (postgresql+psycopg://...)",
            )
        )
    elif ctx.dialect.driver != "psycopg":
        problems.append(
            Refused(
                f"the SQLAlchemy URL uses the {ctx.dialect.driver} driver; onlineschema runs on"
                " psycopg 3",
                "use a postgresql+psycopg://... URL in alembic.ini (sqlalchemy.url) or env.py",
            )
        )
    external = getattr(ctx, "_in_external_transaction", None)
    if external is None:  # not recorded by this Alembic: test what autocommit_block() needs
        conn = ctx.connection
        external = bool(
            conn is not None
            and conn.in_transaction()
            and getattr(ctx, "_transaction", None) is None
        )
    if external:
        problems.append(
            Refused(
                "env.py passed context.configure() a connection that was already inside a"
                " transaction (opened with engine.begin() or connection.begin(), or by a"
                " query run before configure()), so Alembic does not own the transaction and"
                " cannot commit it before the online steps",
                "in env.py open the connection with `with connectable.connect() as"
                " connection:` (not engine.begin()), call connection.commit() after any query"
                " run before context.configure(), and run the migrations inside"
                " `with context.begin_transaction():`",
            )
        )
    if not ctx.opts.get("transaction_per_migration"):
        problems.append(
            Refused(
                "env.py does not set transaction_per_migration=True: all revisions of this"
                " run share one transaction, which the online steps would have to commit"
                " halfway, recording earlier revisions in alembic_version before the run ends",
                "in env.py, run_migrations_online(), add transaction_per_migration=True to"
                " context.configure(connection=connection, ...)",
            )
        )
    refuse_all(problems, "the Alembic environment is not safe for online migrations")


def refuse_all(problems: list[Refused], headline: str) -> None:
    """Refuse with every problem found (one as it is, several listed under
    ``headline``), so that one run shows all there is to fix in env.py."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Refused(f"{headline}:\n" + "\n".join(f"- {p}" for p in problems))


def _run_online(ctx: MigrationContext, operation: OnlineMigrateOp, settings: Settings) -> Result:
    check_environment(ctx)
    name, phase = operation.name, operation.phase
    bound = log.bind(migration=name, phase=phase)
    bound.info("alembic_online_migrate")
    try:
        with ctx.autocommit_block():
            connection = ctx.connection
            assert connection is not None
            with Executor(connection, settings) as ex:
                result = _dispatch(ex, operation)
    except OnlineSchemaError as exc:
        if phase in ("run", "expand", "contract"):
            exc.add_note(
                f"alembic: this revision was not recorded in alembic_version; run the same"
                f" `alembic upgrade` again to resume migration {name!r}"
                f" (or `onlineschema abort {name}` to undo it)"
            )
        else:
            exc.add_note("alembic: the downgrade was not recorded in alembic_version; run it again")
        raise
    if MigrationState(result.state).finished:
        _forget_with_version(ctx, settings.state_schema, name)
    bound.info("alembic_online_migrate_done", state=result.state)
    return result


def _dispatch(ex: Executor, operation: OnlineMigrateOp) -> Result:
    name, phase = operation.name, operation.phase
    row = ex.record(name)
    if operation.changes and row is not None and phase in ("contract", "abort"):
        if row["changes_hash"] != changes_hash(operation.changes):
            raise Refused(
                f"the changes given to {phase}() differ from those migration {name!r} was"
                " started with",
                f"pass the same changes as the revision that expanded {name!r}, or none",
            )
    if phase in ("run", "expand"):
        # an aborted migration (outside Alembic, or by a downgrade that did not get
        # recorded) starts afresh: upgrading the revision again means running it again
        return ex.apply(
            operation.changes,
            name,
            stop_before_contract=phase == "expand",
            restart_aborted=True,
        )
    if row is None:
        if phase == "contract":
            raise UnknownMigration(
                f"no migration named {name!r} is waiting for its contract phase",
                "run the revision that expands it first (expand(op, name, changes)); a"
                " migration that already finished has no contract phase left",
            )
        state = None
    else:
        state = MigrationState(row["state"])
        # what this phase leaves behind is already there: the revision ran it before
        done = MigrationState.COMPLETED if phase == "contract" else MigrationState.ABORTED
        if state is done:
            log.info(f"alembic_{phase}_already_done", migration=name)
            return Result(name, state, 0, 0, 0.0, Plan.from_dict(row["plan"]))
    if phase == "contract":
        return ex.contract(name)
    if decide(Command.ABORT, state) is not Outcome.RUN:
        raise Refused(
            f"migration {name!r} is not unfinished or expanded (it "
            + ("completed" if row else "has no record: it finished, or never started")
            + "); abort undoes only a migration that has not finished",
            "undo a finished migration with a new one in downgrade(): run(op, name, [...])",
        )
    return ex.abort(name)


#: finished migrations whose records go when Alembic records their revision
_PENDING: weakref.WeakKeyDictionary[MigrationContext, list[tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def _forget_with_version(ctx: MigrationContext, schema: str, name: str) -> None:
    """Delete the migration's record in the transaction that writes the revision's
    ``alembic_version`` row (Alembic's ``on_version_apply`` hook runs there, after the
    row is written, before the commit).

    Not earlier: another operation later in the same revision commits the revision's
    transaction again (autocommit_block), and if the revision then stops, the finished
    migration must still be found, as finished, when the revision runs again.
    """
    pending = _PENDING.get(ctx)
    if pending is None:
        pending = _PENDING[ctx] = []
        ctx.on_version_apply_callbacks = (*ctx.on_version_apply_callbacks, _on_version_apply)
    pending.append((schema, name))


def _on_version_apply(*, ctx: MigrationContext, **_: object) -> None:
    pending = _PENDING.get(ctx)
    if not pending:
        return
    connection = ctx.connection
    assert connection is not None
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    for schema, name in pending:
        StateStore(driver, schema).forget(name)
        log.info("alembic_migration_recorded", migration=name)
    pending.clear()


# --- offline ---------------------------------------------------------------------------


def offline_server_version(ctx: MigrationContext) -> int:
    """``server_version_num`` to plan for with ``--sql``: the dialect's, else
    ``context.configure(onlineschema_server_version=15)``, else 18."""
    info = getattr(ctx.dialect, "server_version_info", None)
    if info:
        major = int(info[0])
        minor = int(info[1]) if len(info) > 1 else 0
        return major * 10000 + minor
    opt = ctx.opts.get("onlineschema_server_version")
    if opt is None:
        return DEFAULT_OFFLINE_SERVER_VERSION * 10000
    value = int(opt)
    return value * 10000 if value < 1000 else value


def assumed_catalog(
    changes: Sequence[Change],
    server_version: int,
    search_path: tuple[str, ...] = ("public",),
) -> tuple[Catalog, list[str]]:
    """A catalog in which ``changes`` are valid, for planning without a database.

    Every table a change names exists; every column, constraint and index it uses
    exists in the state the change needs (a column made NOT NULL is nullable, a
    constraint validated is NOT VALID, ...), unless an earlier change of the list creates
    it: each change's recipe says so (``Recipe.assume``). Returns the catalog and the
    assumptions, one line each, for the script header.
    """
    schema = AssumedSchema(search_path[0])
    for c in changes:
        recipes.lookup(c).announce(c, schema)
    for c in changes:
        recipe = recipes.lookup(c)
        if not recipe.offline_ok:
            raise Refused(
                f"{c.describe()}: with --sql there is no database, and how a type change,"
                " rename or drop runs depends on the live table (its types, indexes,"
                " constraints and what depends on it)",
                "run this revision online (alembic upgrade), or render the plan against a"
                " copy of the database with `onlineschema plan --format sql`",
            )
        recipe.assume(c, schema)
    functions = catalog_request(changes)["functions"]
    return schema.catalog(server_version, search_path, functions), schema.assumptions


def _undo_steps(plan: Plan) -> tuple[list[Step], list[str]]:
    """What ``abort`` runs for a fully expanded migration, newest first, as steps
    (executor.steps.undo_steps, as the online abort runs them)."""
    out: list[Step] = []
    notes: list[str] = []
    for s in reversed(plan.steps):
        if s.phase == "contract":
            continue
        if not s.undo_offline_ok:
            notes.append(
                f"step {s.id} ({s.description}) is not undone: the previous default is not"
                " known without the database"
            )
            continue
        out += [undo for undo, _ in undo_steps(s)]
    return out, notes


def render_offline(
    name: str,
    changes: Sequence[Change],
    *,
    phase: Phase = "run",
    settings: Settings | None = None,
    server_version: int = DEFAULT_OFFLINE_SERVER_VERSION * 10000,
) -> str:
    """The SQL script for ``alembic upgrade --sql``: ``changes`` planned against
    :func:`assumed_catalog`, the steps of ``phase`` rendered with their timeouts and
    transaction boundaries; backfills become marked ``onlineschema apply`` commands."""

    settings = settings or Settings()
    major = server_version // 10000
    head = [
        f"-- onlineschema migration {name!r}, phase {phase} (rendered offline by alembic --sql)",
    ]
    if not changes:
        command = f"onlineschema {'contract' if phase == 'contract' else 'abort'} {name}"
        head += [
            f"-- The {phase} phase of {name!r} cannot be rendered: the revision did not give",
            f"-- its changes ({phase}(op, {name!r}, changes)). Run it online instead:",
            "-- ===== ACTION REQUIRED: not run by this script =====",
            f"--   {command}",
            "",
        ]
        return "\n".join(head)
    catalog, assumptions = assumed_catalog(changes, server_version)
    plan = build_plan(catalog, changes).plan
    head += [
        "-- PREFLIGHT CHECKS WERE NOT RUN: there is no database in offline mode. The plan",
        f"-- assumes PostgreSQL {major} (set context.configure(onlineschema_server_version=N)",
        "-- in env.py to change it) and a schema in which the changes are valid:",
    ]
    head += [f"--   {a}" for a in assumptions] or ["--   (nothing beyond the changes)"]
    notes: list[str] = list(plan.notes)
    if phase in ("run", "expand"):
        # as online: expand holds the whole contract phase, run the breaking steps only
        held = [
            s for s in plan.steps if s.phase == "contract" and (phase == "expand" or s.breaking)
        ]
        steps = [s for s in plan.steps if s not in held]
        if held:
            notes.append(
                f"{len(held)} contract step(s) run in the revision that calls"
                f" contract(op, {name!r}, ...): " + "; ".join(s.description for s in held)
            )
    elif phase == "contract":
        steps = [s for s in plan.steps if s.phase == "contract"]
    else:
        steps, undo_notes = _undo_steps(plan)
        notes += undo_notes
    rendered: list[Step] = []
    commands = 0
    for s in steps:
        if s.kind is StepKind.BACKFILL:
            commands += 1
            s = with_backfill_command(s)  # its command, for the marked line
            s = dataclasses.replace(
                s,
                description=(
                    s.description.rsplit("; ", 1)[0] + " -- ===== ACTION REQUIRED: run the"
                    " command below at this point; this script cannot batch it ====="
                ),
            )
        rendered.append(s)
    if commands:
        head.append(
            f"-- {commands} step(s) below are batched backfills this script cannot run: each"
            " is marked ACTION REQUIRED with the command to run (with ONLINESCHEMA_DSN set)."
        )
    for note in notes:
        head.append(f"-- note: {note}")
    if not rendered:
        head.append("-- (no steps)")
    body = render_sql_script(rendered, settings)
    return "\n".join(head) + "\n" + body
