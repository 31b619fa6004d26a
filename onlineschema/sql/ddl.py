"""Every SQL statement onlineschema sends is composed here, with ``psycopg.sql``.

Names go through ``sql.Identifier`` and values through ``sql.Literal``; the only text
inserted as-is are expressions and type names, which ``onlineschema.expressions`` has
parsed with PostgreSQL's parser and re-rendered before they reach this module. The
postconditions and compile probes are in ``sql.checks``, the rewriting of index and
constraint definitions in ``sql.rewrite`` (both reachable as ``ddl.<name>`` too): a
reviewer auditing quoting reads ``onlineschema/sql/``.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from .compose import ident as ident
from .compose import qname as qname
from .compose import render as render


def _idents(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _alter(schema: str, table: str, body: sql.Composable) -> str:
    return render(sql.SQL("ALTER TABLE {} {}").format(qname(schema, table), body))


# --- columns -------------------------------------------------------------------------


def add_column(
    schema: str,
    table: str,
    column: str,
    type_: str,
    *,
    default: str | None = None,
    not_null: bool = False,
    default_for_new_rows: str | None = None,
) -> str:
    """``ADD COLUMN``; ``default_for_new_rows`` is set in the same statement *after* the
    add, so existing rows stay NULL (no rewrite) and only new rows get it."""
    body = sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(column), sql.SQL(type_))
    if default is not None:
        body = sql.SQL("{} DEFAULT {}").format(body, sql.SQL(default))
    if not_null:
        body = sql.SQL("{} NOT NULL").format(body)
    if default_for_new_rows is not None:
        body = sql.SQL("{}, ALTER COLUMN {} SET DEFAULT {}").format(
            body, sql.Identifier(column), sql.SQL(default_for_new_rows)
        )
    return _alter(schema, table, body)


def drop_column(schema: str, table: str, column: str, *, if_exists: bool = True) -> str:
    fmt = "DROP COLUMN IF EXISTS {}" if if_exists else "DROP COLUMN {}"
    return _alter(schema, table, sql.SQL(fmt).format(sql.Identifier(column)))


def set_default(schema: str, table: str, column: str, default: str | None) -> str:
    if default is None:
        return drop_default(schema, table, column)
    return _alter(
        schema,
        table,
        sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(column), sql.SQL(default)),
    )


def drop_default(schema: str, table: str, column: str) -> str:
    return _alter(
        schema, table, sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(column))
    )


def set_not_null(schema: str, table: str, column: str) -> str:
    return _alter(
        schema, table, sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(column))
    )


def drop_not_null(schema: str, table: str, column: str) -> str:
    return _alter(
        schema, table, sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(column))
    )


def rename_column(schema: str, table: str, column: str, new_name: str) -> str:
    return _alter(
        schema,
        table,
        sql.SQL("RENAME COLUMN {} TO {}").format(sql.Identifier(column), sql.Identifier(new_name)),
    )


def alter_column_type(schema: str, table: str, column: str, type_: str, using: str | None) -> str:
    body = sql.SQL("ALTER COLUMN {} TYPE {}").format(sql.Identifier(column), sql.SQL(type_))
    if using:
        body = sql.SQL("{} USING {}").format(body, sql.SQL(using))
    return _alter(schema, table, body)


# --- constraints ---------------------------------------------------------------------


def add_check(schema: str, table: str, name: str, expr: str, *, not_valid: bool) -> str:
    body = sql.SQL("ADD CONSTRAINT {} CHECK ({})").format(sql.Identifier(name), sql.SQL(expr))
    if not_valid:
        body = sql.SQL("{} NOT VALID").format(body)
    return _alter(schema, table, body)


def check_not_null_expr(column: str) -> str:
    return render(sql.SQL("{} IS NOT NULL").format(sql.Identifier(column)))


def add_not_null_constraint(schema: str, table: str, name: str, column: str) -> str:
    """PostgreSQL 18: a NOT NULL constraint that existing rows are not yet checked against."""
    return _alter(
        schema,
        table,
        sql.SQL("ADD CONSTRAINT {} NOT NULL {} NOT VALID").format(
            sql.Identifier(name), sql.Identifier(column)
        ),
    )


def validate_constraint(schema: str, table: str, name: str) -> str:
    return _alter(schema, table, sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(name)))


def drop_constraint(schema: str, table: str, name: str, *, if_exists: bool = True) -> str:
    fmt = "DROP CONSTRAINT IF EXISTS {}" if if_exists else "DROP CONSTRAINT {}"
    return _alter(schema, table, sql.SQL(fmt).format(sql.Identifier(name)))


def add_foreign_key(
    schema: str,
    table: str,
    name: str,
    columns: Sequence[str],
    ref_schema: str,
    ref_table: str,
    ref_columns: Sequence[str],
    *,
    on_delete: str | None,
    on_update: str | None,
    deferrable: bool,
    initially_deferred: bool,
    not_valid: bool,
) -> str:
    body = sql.SQL("ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}").format(
        sql.Identifier(name), _idents(columns), qname(ref_schema, ref_table)
    )
    if ref_columns:
        body = sql.SQL("{} ({})").format(body, _idents(ref_columns))
    # actions are checked against FK_ACTIONS by the planner before they get here
    if on_delete:
        body = sql.SQL("{} ON DELETE {}").format(body, sql.SQL(on_delete))
    if on_update:
        body = sql.SQL("{} ON UPDATE {}").format(body, sql.SQL(on_update))
    if deferrable:
        body = sql.SQL("{} DEFERRABLE").format(body)
        if initially_deferred:
            body = sql.SQL("{} INITIALLY DEFERRED").format(body)
    if not_valid:
        body = sql.SQL("{} NOT VALID").format(body)
    return _alter(schema, table, body)


FK_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"})


def add_constraint_using_index(
    schema: str,
    table: str,
    name: str,
    index: str,
    *,
    primary_key: bool,
    deferrable: bool = False,
    initially_deferred: bool = False,
) -> str:
    kind = "PRIMARY KEY" if primary_key else "UNIQUE"
    deferral = ""
    if deferrable:
        deferral = " DEFERRABLE INITIALLY DEFERRED" if initially_deferred else " DEFERRABLE"
    return _alter(
        schema,
        table,
        sql.SQL("ADD CONSTRAINT {} " + kind + " USING INDEX {}" + deferral).format(
            sql.Identifier(name), sql.Identifier(index)
        ),
    )


def create_index(
    schema: str,
    table: str,
    name: str,
    *,
    columns: Sequence[str] = (),
    elements: Sequence[str] = (),
    unique: bool = False,
    using: str = "btree",
    include: Sequence[str] = (),
    where: str | None = None,
    concurrently: bool = True,
    only: bool = False,
) -> str:
    """``CREATE INDEX``; ``only``: ``ON ONLY`` a partitioned table (an invalid index until
    an index of every partition is attached to it)."""
    parts: list[sql.Composable] = [sql.Identifier(c) for c in columns]
    parts += [sql.SQL(e) for e in elements]
    q = sql.SQL(
        "CREATE {unique}INDEX {conc}{name} ON {only}{table} USING {using} ({elems})"
    ).format(
        unique=sql.SQL("UNIQUE " if unique else ""),
        conc=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name),
        only=sql.SQL("ONLY " if only else ""),
        table=qname(schema, table),
        using=sql.Identifier(using),
        elems=sql.SQL(", ").join(parts),
    )
    if include:
        q = sql.SQL("{} INCLUDE ({})").format(q, _idents(include))
    if where:
        q = sql.SQL("{} WHERE {}").format(q, sql.SQL(where))
    return render(q)


def drop_index(schema: str, name: str, *, concurrently: bool = True, if_exists: bool = True) -> str:
    return render(
        sql.SQL("DROP INDEX {conc}{ie}{name}").format(
            conc=sql.SQL("CONCURRENTLY " if concurrently else ""),
            ie=sql.SQL("IF EXISTS " if if_exists else ""),
            name=qname(schema, name),
        )
    )


def attach_index(schema: str, parent_index: str, child_schema: str, child_index: str) -> str:
    """Make ``child_index`` (of a partition) a partition of ``parent_index``."""
    return render(
        sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
            qname(schema, parent_index), qname(child_schema, child_index)
        )
    )


def add_table_constraint(schema: str, table: str, name: str, definition: str) -> str:
    """``ADD CONSTRAINT name <definition>`` (``definition`` composed by this module)."""
    return _alter(
        schema,
        table,
        sql.SQL("ADD CONSTRAINT {} {}").format(sql.Identifier(name), sql.SQL(definition)),
    )


def unique_definition(columns: Sequence[str], *, primary_key: bool) -> str:
    kind = "PRIMARY KEY" if primary_key else "UNIQUE"
    return render(sql.SQL(kind + " ({})").format(_idents(columns)))


def assert_partitions(
    schema: str, table: str, leaves: Sequence[tuple[str, str]], *, allow_new: bool = False
) -> str:
    """A statement that fails, saying what changed, unless the leaf partitions of
    ``schema.table`` are exactly ``leaves`` (the plan was made for those); with
    ``allow_new``, partitions attached since are accepted (PostgreSQL gave them what the
    step needs when they were attached)."""
    planned = sorted(f"{s}.{n}" for s, n in leaves)
    body = sql.SQL(
        "DECLARE\n"
        "  planned text[] := {planned}::text[];\n"
        "  found text[];\n"
        "BEGIN\n"
        "  SELECT coalesce(array_agg(n.nspname || '.' || c.relname), '{{}}')\n"
        "    INTO found FROM pg_partition_tree({rel}::regclass) t\n"
        "    JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace\n"
        "    WHERE c.relkind <> 'p';\n"
        "  IF NOT (found @> planned{exact}) THEN\n"
        "    RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',\n"
        "      MESSAGE = 'the partitions of ' || {label} || ' changed since the migration"
        " was planned (attached: ' || coalesce(array_to_string(ARRAY(SELECT unnest(found)"
        " EXCEPT SELECT unnest(planned)), ', '), '') || '; detached: ' ||"
        " coalesce(array_to_string(ARRAY(SELECT unnest(planned) EXCEPT SELECT unnest(found)),"
        " ', '), '') || ')',\n"
        "      HINT = 'run `onlineschema abort` on this migration and apply it again: the new"
        " plan covers the partitions as they are then';\n"
        "  END IF;\n"
        "END"
    ).format(
        planned=sql.Literal(planned),
        exact=sql.SQL("" if allow_new else " AND found <@ planned"),
        rel=sql.Literal(render(qname(schema, table))),
        label=sql.Literal(f"{schema}.{table}"),
    )
    return render(sql.SQL("DO {}").format(sql.Literal(render(body))))


def reindex_index(schema: str, name: str) -> str:
    return render(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(qname(schema, name)))


# --- triggers ------------------------------------------------------------------------


def fill_trigger_function(schema: str, function: str, table: str, column: str, expr: str) -> str:
    """A row trigger that fills ``column`` from ``expr`` for rows written with it NULL.

    The expression sees the new row under the table's own name, as it would in an
    ``UPDATE``; rows written by code that does not know the column yet get the value
    the backfill would have given them.
    """
    body = sql.SQL(
        "BEGIN\n"
        "  IF NEW.{col} IS NULL THEN\n"
        "    SELECT {expr} INTO NEW.{col} FROM (SELECT NEW.*) AS {alias};\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END"
    ).format(col=sql.Identifier(column), expr=sql.SQL(expr), alias=sql.Identifier(table))
    return render(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}"
        ).format(fn=qname(schema, function), body=sql.Literal(render(body)))
    )


def create_trigger(
    schema: str, table: str, trigger: str, function: str, *, events: str = "INSERT OR UPDATE"
) -> str:
    assert events in ("INSERT", "INSERT OR UPDATE", "UPDATE")
    return render(
        sql.SQL(
            "CREATE TRIGGER {trg} BEFORE "
            + events
            + " ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()"
        ).format(
            trg=sql.Identifier(trigger), table=qname(schema, table), fn=qname(schema, function)
        )
    )


def drop_trigger(schema: str, table: str, trigger: str) -> str:
    return render(
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger), qname(schema, table)
        )
    )


def drop_function(schema: str, function: str) -> str:
    return render(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(qname(schema, function)))


# --- breaking changes: type changes, renames, drops (onlineschema.breaking) -----------


def add_plain_column(
    schema: str, table: str, column: str, type_: str, *, collation: str | None = None
) -> str:
    """``ADD COLUMN`` nullable, without a default (catalog only); ``collation`` is SQL
    already quoted (from the catalog)."""
    body = sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(column), sql.SQL(type_))
    if collation:
        body = sql.SQL("{} COLLATE {}").format(body, sql.SQL(collation))
    return _alter(schema, table, body)


def alter_column_type_plain(
    schema: str, table: str, column: str, type_: str, collation: str | None = None
) -> str:
    """``ALTER COLUMN ... TYPE`` with no ``USING`` (for binary-coercible changes), keeping
    the column's ``collation`` (SQL from the catalog) when it has one."""
    body = sql.SQL("ALTER COLUMN {} TYPE {}").format(sql.Identifier(column), sql.SQL(type_))
    if collation:
        body = sql.SQL("{} COLLATE {}").format(body, sql.SQL(collation))
    return _alter(schema, table, body)


def set_timezone_local(zone: str) -> str:
    return render(sql.SQL("SELECT set_config('TimeZone', {}, true)").format(sql.Literal(zone)))


def at_time_zone(column: str, zone: str) -> str:
    return render(sql.SQL("({} AT TIME ZONE {})").format(sql.Identifier(column), sql.Literal(zone)))


def cast_expr(expr: str, type_: str) -> str:
    return render(sql.SQL("CAST(({}) AS {})").format(sql.SQL(expr), sql.SQL(type_)))


def sync_trigger_function(
    schema: str,
    function: str,
    table: str,
    *,
    old: str,
    new: str,
    new_type: str,
    forward: str,
    sources: Sequence[str],
    reverse: str | None,
    refuse_message: str,
) -> str:
    """A row trigger keeping column ``new`` in step with ``old`` both ways.

    ``forward`` computes the new column from the row (it sees the row under the table's
    own name, as an ``UPDATE`` would); ``reverse`` computes the old column from the new
    value (it sees only that value, under the old column's name); ``sources`` are the
    columns ``forward`` reads. A write is attributed to whichever side the writer changed:

    * INSERT: the new column left NULL -> filled from the old; set to a value that
      disagrees with the old -> the old is filled from it;
    * UPDATE: a source changed -> the new column follows; else the new column changed
      to a value that disagrees -> the old follows; else a row not yet backfilled
      (new column NULL) is filled.

    Values are compared as text so that types without an equality operator work.
    Without ``reverse`` a disagreeing write to the new column is refused.
    """
    n, o = sql.Identifier(new), sql.Identifier(old)
    if reverse is not None:
        back: sql.Composable = sql.SQL(
            "SELECT {rev} INTO NEW.{o} FROM (SELECT NEW.{n} AS {o}) AS {alias};"
        ).format(rev=sql.SQL(reverse), o=o, n=n, alias=sql.Identifier(table))
    else:
        back = sql.SQL(
            "RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state', MESSAGE = {msg};"
        ).format(msg=sql.Literal(refuse_message))
    src_new = sql.SQL(", ").join(sql.SQL("NEW.{}::text").format(sql.Identifier(c)) for c in sources)
    src_old = sql.SQL(", ").join(sql.SQL("OLD.{}::text").format(sql.Identifier(c)) for c in sources)
    if len(sources) > 1:
        src_new = sql.SQL("ROW({})").format(src_new)
        src_old = sql.SQL("ROW({})").format(src_old)
    body = sql.SQL(
        "DECLARE\n"
        "  fwd {new_type};\n"
        "BEGIN\n"
        "  SELECT {forward} INTO fwd FROM (SELECT NEW.*) AS {alias};\n"
        "  IF TG_OP = 'INSERT' THEN\n"
        "    IF NEW.{n} IS NULL THEN\n"
        "      NEW.{n} := fwd;\n"
        "    ELSIF NEW.{n}::text IS DISTINCT FROM fwd::text THEN\n"
        "      {back}\n"
        "    END IF;\n"
        "  ELSIF {src_new} IS DISTINCT FROM {src_old} THEN\n"
        "    NEW.{n} := fwd;\n"
        "  ELSIF NEW.{n}::text IS DISTINCT FROM OLD.{n}::text THEN\n"
        "    IF NEW.{n}::text IS DISTINCT FROM fwd::text THEN\n"
        "      {back}\n"
        "    END IF;\n"
        "  ELSIF NEW.{n} IS NULL THEN\n"
        "    NEW.{n} := fwd;\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END"
    ).format(
        new_type=sql.SQL(new_type),
        forward=sql.SQL(forward),
        alias=sql.Identifier(table),
        n=n,
        back=back,
        src_new=src_new,
        src_old=src_old,
    )
    return render(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}"
        ).format(fn=qname(schema, function), body=sql.Literal(render(body)))
    )


def rename_index(schema: str, index: str, new_name: str) -> str:
    return render(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            qname(schema, index), sql.Identifier(new_name)
        )
    )


def rename_constraint(schema: str, table: str, name: str, new_name: str) -> str:
    return _alter(
        schema,
        table,
        sql.SQL("RENAME CONSTRAINT {} TO {}").format(
            sql.Identifier(name), sql.Identifier(new_name)
        ),
    )


def add_identity(
    schema: str, table: str, column: str, always: bool, seq_schema: str, seq_name: str
) -> str:
    return _alter(
        schema,
        table,
        sql.SQL("ALTER COLUMN {} ADD GENERATED {} AS IDENTITY (SEQUENCE NAME {})").format(
            sql.Identifier(column),
            sql.SQL("ALWAYS" if always else "BY DEFAULT"),
            qname(seq_schema, seq_name),
        ),
    )


def add_identity_generated(
    schema: str, table: str, column: str, *, always: bool, options: str | None
) -> str:
    """``ALTER COLUMN c ADD GENERATED ... AS IDENTITY [(options)]``; ``options`` are
    sequence options as PostgreSQL's parser read them (checked by the recipe to be
    nothing else)."""
    body = sql.SQL("ALTER COLUMN {} ADD GENERATED {} AS IDENTITY").format(
        sql.Identifier(column), sql.SQL("ALWAYS" if always else "BY DEFAULT")
    )
    if options:
        body = sql.SQL("{} ({})").format(body, sql.SQL(options))
    return _alter(schema, table, body)


def drop_identity(schema: str, table: str, column: str) -> str:
    return _alter(
        schema,
        table,
        sql.SQL("ALTER COLUMN {} DROP IDENTITY IF EXISTS").format(sql.Identifier(column)),
    )


def continue_sequence(seq_schema: str, seq: str, from_schema: str, from_seq: str) -> str:
    """Make ``seq`` hand out next what ``from_seq`` would have."""
    return render(
        sql.SQL("SELECT setval({to}::regclass, nextval({src}::regclass), false)").format(
            to=sql.Literal(render(qname(seq_schema, seq))),
            src=sql.Literal(render(qname(from_schema, from_seq))),
        )
    )


def sequence_owned_by(seq_schema: str, seq: str, schema: str, table: str, column: str) -> str:
    return render(
        sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
            qname(seq_schema, seq), sql.Identifier(schema, table, column)
        )
    )


def sequence_as(seq_schema: str, seq: str, type_: str) -> str:
    return render(sql.SQL("ALTER SEQUENCE {} AS {}").format(qname(seq_schema, seq), sql.SQL(type_)))


def rename_sequence(seq_schema: str, seq: str, new_name: str) -> str:
    return render(
        sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
            qname(seq_schema, seq), sql.Identifier(new_name)
        )
    )


def drop_table(schema: str, table: str) -> str:
    return render(sql.SQL("DROP TABLE {}").format(qname(schema, table)))


def drop_columns(schema: str, table: str, columns: Sequence[str]) -> str:
    return _alter(
        schema,
        table,
        sql.SQL(", ").join(
            sql.SQL("DROP COLUMN IF EXISTS {}").format(sql.Identifier(c)) for c in columns
        ),
    )


def analyze(schema: str, table: str, columns: Sequence[str]) -> str:
    return render(sql.SQL("ANALYZE {} ({})").format(qname(schema, table), _idents(columns)))


# The statements moved to their own modules stay reachable as ``ddl.<name>``.
from .checks import *  # noqa: E402, F403
from .rewrite import *  # noqa: E402, F403
