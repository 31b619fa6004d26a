"""Ordinary Alembic revision files (``op.add_column``, ``op.create_index``, ...) run online.

``env.py`` calls :func:`configure` instead of ``context.configure``::

    from onlineschema.alembic import configure

    with connectable.connect() as connection:
        configure(context, connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()

How it works, and why this way:

* Alembic's built-in operations are replaced with
  ``Operations.implementation_for(OpClass, replace=True)`` (Alembic >= 1.17.2). The
  replacements are active only for migration contexts configured through
  :func:`configure`; any other Alembic context in the process gets Alembic's own
  implementations from :mod:`alembic.operations.toimpl`.
* In a configured context an operation runs nothing: its DDL is rendered with the
  context's dialect exactly as ``alembic upgrade --sql`` renders it (a private offline
  context with ``literal_binds``) and kept. A string given to ``op.execute`` is kept as
  written.
* :func:`configure` wraps the ``upgrade()`` / ``downgrade()`` of each revision step
  (``RevisionStep.migration_fn``, through the context's migrations function). When the
  function returns, the kept SQL of the revision is read by
  :func:`onlineschema.sqlinput.parse_sql` into change objects and run as ONE onlineschema
  migration named ``alembic:<revision>`` (``alembic:<revision>:downgrade`` for a
  downgrade) through :class:`~onlineschema.integrations.alembic.OnlineMigrateOp`: its
  ``autocommit_block()`` commits the revision's transaction (nothing holds a lock or a
  snapshot on Alembic's connection while the steps run), the steps run synchronously,
  and only then does Alembic write the ``alembic_version`` row, in the transaction that
  also deletes the migration's state record. Flushing at ``on_version_apply`` instead
  would be too late: that hook runs after Alembic's ``UPDATE alembic_version`` in the
  same transaction, which the online steps would then have to commit first.
* A breaking change in a revision (drop column, type change, rename) is what the
  revision file asks for, so the contract phase runs in the same ``alembic upgrade``.
* Operations that have no online form are refused when the revision's function
  returns, before any DDL of the revision, naming the revision, the operation, its SQL,
  why, and what to do (``configure(..., allow_raw=True)`` runs them as written, flagged
  in the plan).

After a stop (lock budget spent) or a kill, ``alembic upgrade`` again reaches the same
revision with the same operations, so the same migration is resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from alembic.operations import MigrateOperation, Operations, ops, toimpl
from alembic.runtime.migration import MigrationContext, RevisionStep

from ...changes import Change
from ...errors import Refused
from ...executor import Result, Settings
from ...sqlinput import SUPPORTED_TEXT, parse_sql
from . import OnlineMigrateOp, _online_migrate, check_environment, refuse_all

__all__ = ["NATIVE_OPERATIONS", "configure", "migration_name"]

log = structlog.stdlib.get_logger("onlineschema.alembic")

#: the built-in operations whose implementations onlineschema replaces, with Alembic's own
#: implementation (used by contexts that were not configured through :func:`configure`)
NATIVE_OPERATIONS: dict[type[MigrateOperation], Callable[..., Any]] = {
    ops.AddColumnOp: toimpl.add_column,
    ops.AlterColumnOp: toimpl.alter_column,
    ops.DropColumnOp: toimpl.drop_column,
    ops.CreateIndexOp: toimpl.create_index,
    ops.DropIndexOp: toimpl.drop_index,
    ops.AddConstraintOp: toimpl.create_constraint,
    ops.DropConstraintOp: toimpl.drop_constraint,
    ops.CreateTableOp: toimpl.create_table,
    ops.DropTableOp: toimpl.drop_table,
    ops.RenameTableOp: toimpl.rename_table,
    ops.CreateTableCommentOp: toimpl.create_table_comment,
    ops.DropTableCommentOp: toimpl.drop_table_comment,
    ops.BulkInsertOp: toimpl.bulk_insert,
    ops.ExecuteSQLOp: toimpl.execute_sql,
}


def migration_name(revision: str, upgrade: bool = True, part: int = 1) -> str:
    """The onlineschema migration that runs a revision's operations: ``alembic:<rev>``
    (``:downgrade`` for a downgrade; ``.2``, ``.3`` for operations that follow an
    explicit ``run(op, ...)`` in the same function)."""
    name = f"alembic:{revision}"
    if not upgrade:
        name += ":downgrade"
    if part > 1:
        name += f".{part}"
    return name


@dataclasses.dataclass
class _Kept:
    """One operation of a revision: what it is, and its SQL (or why it has none)."""

    what: str
    sql: str
    error: str | None = None


@dataclasses.dataclass
class _Native:
    """What onlineschema keeps for one configured migration context."""

    settings: Settings | None
    allow_raw: bool
    kept: list[_Kept] = dataclasses.field(default_factory=list)
    revision: str | None = None
    path: str | None = None
    upgrade: bool = True
    part: int = 0
    _render: Operations | None = None
    _buffer: io.StringIO = dataclasses.field(default_factory=io.StringIO)

    def renderer(self, ctx: MigrationContext) -> tuple[Operations, io.StringIO]:
        """An offline Operations on the context's dialect: running an operation on it
        writes the operation's SQL, as ``alembic upgrade --sql`` does, to the buffer."""
        if self._render is None:
            render_ctx = MigrationContext.configure(
                dialect=ctx.dialect,
                opts={"as_sql": True, "output_buffer": self._buffer, "literal_binds": True},
            )
            self._render = Operations(render_ctx)
        return self._render, self._buffer


_ACTIVE: weakref.WeakKeyDictionary[MigrationContext, _Native] = weakref.WeakKeyDictionary()


# --- env.py ----------------------------------------------------------------------------


def configure(
    context: Any,
    *,
    settings: Settings | None = None,
    allow_raw: bool = False,
    server_version: int | None = None,
    **kw: Any,
) -> MigrationContext:
    """``context.configure(**kw)`` for onlineschema: every revision's operations run
    online. ``context`` is ``alembic.context`` in env.py; ``kw`` are the usual
    ``context.configure()`` arguments (``connection=`` online, ``url=`` for ``--sql``).

    ``settings``: onlineschema :class:`~onlineschema.Settings` (lock timeout, retries,
    backfill pacing). ``allow_raw``: run operations that have no online form as written
    (flagged in the plan) instead of refusing them. ``server_version``: the PostgreSQL
    major version ``--sql`` plans for (default: 18).

    Refuses, before any DDL, settings onlineschema cannot run with: returns the
    configured :class:`~alembic.runtime.migration.MigrationContext`.
    """
    problems: list[Refused] = []
    if "transaction_per_migration" in kw and not kw["transaction_per_migration"]:
        problems.append(
            Refused(
                "configure() was given transaction_per_migration=False: onlineschema needs one"
                " transaction per revision, so that a revision is recorded in alembic_version"
                " only after its online steps finished",
                "remove transaction_per_migration from the configure() call in env.py"
                " (onlineschema sets it to True)",
            )
        )
    if "transactional_ddl" in kw and not kw["transactional_ddl"]:
        problems.append(
            Refused(
                "configure() was given transactional_ddl=False: Alembic then runs each"
                " revision without a transaction, and the alembic_version row and the"
                " migration's record could disagree after a crash",
                "remove transactional_ddl from the configure() call in env.py",
            )
        )
    if "onlineschema_settings" in kw and settings is not None:
        problems.append(
            Refused(
                "configure() was given both settings= and onlineschema_settings=",
                "pass the onlineschema Settings once, as settings=Settings(...)",
            )
        )
    if settings is not None and not isinstance(settings, Settings):
        problems.append(
            Refused(
                f"configure(settings=...) is a {type(settings).__name__}",
                "pass settings=onlineschema.Settings(...)",
            )
        )
    refuse_all(problems, "env.py's configure() call is not safe for online migrations")
    kw["transaction_per_migration"] = True
    if settings is not None:
        kw["onlineschema_settings"] = settings
    if server_version is not None:
        kw["onlineschema_server_version"] = server_version
    context.configure(**kw)
    ctx = context.get_context()
    assert isinstance(ctx, MigrationContext)
    if ctx.as_sql:
        if ctx.dialect.name != "postgresql":
            raise Refused(
                f"onlineschema renders PostgreSQL; this Alembic context uses {ctx.dialect.name}",
                "pass configure(url=...) a postgresql+psycopg://... URL",
            )
    else:
        check_environment(ctx)
    _ACTIVE[ctx] = _Native(settings=settings, allow_raw=allow_raw)
    migrations_fn = getattr(ctx, "_migrations_fn", None)
    if migrations_fn is not None:
        ctx._migrations_fn = _wrap_steps(ctx, migrations_fn)
    log.debug("alembic_configured", offline=ctx.as_sql, allow_raw=allow_raw)
    return ctx


def _wrap_steps(
    ctx: MigrationContext, migrations_fn: Callable[..., Iterable[Any]]
) -> Callable[..., Iterator[Any]]:
    def steps(heads: Any, context: MigrationContext) -> Iterator[Any]:
        for step in migrations_fn(heads, context):
            if isinstance(step, RevisionStep):
                step.migration_fn = _revision_fn(ctx, step)
            yield step

    return steps


def _revision_fn(ctx: MigrationContext, step: RevisionStep) -> Callable[..., None]:
    original: Callable[..., None] = step.migration_fn
    script = step.revision

    @functools.wraps(original)
    def run_revision(**kw: Any) -> None:
        native = _ACTIVE[ctx]
        native.kept.clear()
        native.revision, native.path, native.upgrade, native.part = (
            script.revision,
            script.path,
            step.is_upgrade,
            0,
        )
        try:
            original(**kw)
            _flush(ctx, native)
        finally:
            native.kept.clear()
            native.revision = None

    return run_revision


# --- the operations --------------------------------------------------------------------


def _make_impl(
    original: Callable[..., Any],
) -> Callable[[Any, MigrateOperation], Any]:
    def implementation(operations: Any, operation: MigrateOperation) -> Any:
        ctx = operations.migration_context
        native = _ACTIVE.get(ctx)
        if native is None or native.revision is None:
            return original(operations, operation)
        native.kept.append(_render(ctx, native, operations, operation, original))
        return None

    implementation.__name__ = f"onlineschema_{original.__name__}"
    return implementation


for _op_cls, _original in NATIVE_OPERATIONS.items():
    Operations.implementation_for(_op_cls, replace=True)(_make_impl(_original))


@Operations.implementation_for(OnlineMigrateOp, replace=True)
def _online_migrate_in_order(operations: Operations, operation: OnlineMigrateOp) -> Result | None:
    """``run(op, ...)`` in a configured revision: the operations written before it run
    first, as their own migration, so the revision's order is kept."""
    native = _ACTIVE.get(operations.migration_context)
    if native is not None and native.kept:
        _flush(operations.migration_context, native)
    return _online_migrate(operations, operation)


def _render(
    ctx: MigrationContext,
    native: _Native,
    operations: Any,
    operation: MigrateOperation,
    original: Callable[..., Any],
) -> _Kept:
    what = describe_operation(operation)
    if getattr(getattr(operations, "impl", None), "recreate", None) == "always":
        return _Kept(
            what,
            "",
            "batch_alter_table(recreate='always') copies the table into a new one under an"
            " ACCESS EXCLUSIVE lock",
        )
    if isinstance(operation, ops.ExecuteSQLOp) and isinstance(operation.sqltext, str):
        text = operation.sqltext.strip()
        return _Kept(what, text if text.endswith(";") else text + ";")
    render, buffer = native.renderer(ctx)
    buffer.seek(0)
    buffer.truncate()
    try:
        original(render, operation)
    except Exception as exc:  # reported with the revision, before any DDL
        return _Kept(what, "", f"Alembic could not render it as SQL: {exc}")
    return _Kept(what, buffer.getvalue().strip())


def describe_operation(operation: MigrateOperation) -> str:
    """``op.add_column('orders', 'status')``: the operation as the revision wrote it,
    with the names it acts on."""
    name = type(operation).__name__.removesuffix("Op")
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    args: list[str] = []
    for attr in ("table_name", "old_table_name", "index_name", "constraint_name", "column_name"):
        value = getattr(operation, attr, None)
        if isinstance(value, str):
            args.append(repr(value))
    table_name = getattr(getattr(operation, "table", None), "name", None)
    if isinstance(table_name, str):
        args.append(repr(table_name))
    column = getattr(operation, "column", None)
    if column is not None and getattr(column, "name", None):
        args.append(repr(column.name))
    if isinstance(operation, ops.ExecuteSQLOp):
        text = str(operation.sqltext)
        args.append(repr(" ".join(text.split())[:80]))
    return f"op.{snake}({', '.join(args)})"


# --- one revision's migration ----------------------------------------------------------


def _flush(ctx: MigrationContext, native: _Native) -> None:
    kept = list(native.kept)
    native.kept.clear()
    if not kept or native.revision is None:
        return
    changes = _changes(native, kept)
    native.part += 1
    name = migration_name(native.revision, native.upgrade, native.part)
    operations = Operations(ctx)
    op = OnlineMigrateOp(name, changes, settings=native.settings)
    log.info(
        "alembic_revision_online",
        revision=native.revision,
        migration=name,
        operations=len(kept),
        changes=len(changes),
    )
    result = _online_migrate(operations, op)
    if result is not None and result.state == "awaiting_contract":
        # the revision asks for the breaking change itself: finish it now, like Alembic
        contract = OnlineMigrateOp(name, changes, phase="contract", settings=native.settings)
        _online_migrate(operations, contract)


def _changes(native: _Native, kept: list[_Kept]) -> list[Change]:
    script = "\n".join(k.sql for k in kept if k.sql)
    if not any(k.error for k in kept):
        try:
            return parse_sql(script, allow_raw=native.allow_raw) if script.strip() else []
        except Refused:
            pass  # find the operations to blame, below
    problems: list[str] = []
    blamed = 0
    for i, k in enumerate(kept, start=1):
        why = k.error
        if why is None and k.sql:
            try:
                parse_sql(k.sql, allow_raw=native.allow_raw)
            except Refused as exc:
                why = exc.problem
        if why is None:
            continue
        blamed += 1
        problems.append(f"  - operation {i} of {len(kept)}: {k.what}")
        if k.sql:
            problems.append("    SQL: " + " ".join(k.sql.split())[:300])
        problems.append("    " + "\n    ".join(why.splitlines()))
    where = f"alembic revision {native.revision}"
    if native.path:
        where += f" ({native.path})"
    function = "upgrade()" if native.upgrade else "downgrade()"
    if not problems:  # each is fine alone, not together: report the script's problem
        try:
            parse_sql(script, allow_raw=native.allow_raw)
        except Refused as exc:
            raise Refused(
                f"{where}, {function}: {exc.problem}\nnothing of this revision ran", exc.fix
            ) from None
        return []
    raise Refused(
        f"{where}, {function}: {blamed} operation(s) cannot run online, so nothing of this revision ran:\n"
        + "\n".join(problems),
        "change the revision file: rewrite each operation as a supported form (below), move"
        " it to a revision run without onlineschema, or pass allow_raw=True to"
        " onlineschema.alembic.configure() in env.py to run it as written (flagged as raw"
        " in the plan, not made safe).\n" + SUPPORTED_TEXT,
    )
