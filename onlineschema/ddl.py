"""Every SQL statement onlineschema sends is composed here, with ``psycopg.sql``.

Names go through ``sql.Identifier`` and values through ``sql.Literal``; the only text
inserted as-is are expressions and type names, which ``onlineschema.expressions`` has
parsed with PostgreSQL's parser and re-rendered before they reach this module. A reviewer
auditing quoting reads this one file.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql


def render(q: sql.Composable) -> str:
    return q.as_string(None)


def qname(schema: str, name: str) -> sql.Composable:
    return sql.Identifier(schema, name)


def ident(name: str) -> str:
    return render(sql.Identifier(name))


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
    schema: str, table: str, name: str, index: str, *, primary_key: bool
) -> str:
    kind = "PRIMARY KEY" if primary_key else "UNIQUE"
    return _alter(
        schema,
        table,
        sql.SQL("ADD CONSTRAINT {} " + kind + " USING INDEX {}").format(
            sql.Identifier(name), sql.Identifier(index)
        ),
    )


# --- indexes -------------------------------------------------------------------------


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
) -> str:
    parts: list[sql.Composable] = [sql.Identifier(c) for c in columns]
    parts += [sql.SQL(e) for e in elements]
    q = sql.SQL("CREATE {unique}INDEX {conc}{name} ON {table} USING {using} ({elems})").format(
        unique=sql.SQL("UNIQUE " if unique else ""),
        conc=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name),
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


# --- catalog checks (postconditions) -------------------------------------------------

_REL = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = {schema} AND c.relname = {rel}"
)


def _rel(schema: str, rel: str) -> sql.Composable:
    return sql.SQL(_REL).format(schema=sql.Literal(schema), rel=sql.Literal(rel))


def q_column_exists(schema: str, table: str, column: str, *, exists: bool = True) -> str:
    q = sql.SQL(
        "SELECT {neg} EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = ({rel}) "
        "AND attname = {col} AND NOT attisdropped)"
    ).format(neg=sql.SQL("" if exists else "NOT"), rel=_rel(schema, table), col=sql.Literal(column))
    return render(q)


def q_column_notnull(schema: str, table: str, column: str, notnull: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT attnotnull FROM pg_attribute WHERE attrelid = ({rel}) "
            "AND attname = {col} AND NOT attisdropped), false) = {v}"
        ).format(rel=_rel(schema, table), col=sql.Literal(column), v=sql.Literal(notnull))
    )


def q_column_has_default(schema: str, table: str, column: str, has: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT {neg} EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a "
            "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = ({rel}) AND a.attname = {col})"
        ).format(
            neg=sql.SQL("" if has else "NOT"), rel=_rel(schema, table), col=sql.Literal(column)
        )
    )


def q_constraint(schema: str, table: str, name: str, *, validated: bool | None = None) -> str:
    cond: sql.Composable = sql.SQL("")
    if validated is not None:
        cond = sql.SQL(" AND convalidated = {}").format(sql.Literal(validated))
    return render(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = ({rel}) "
            "AND conname = {name}{cond})"
        ).format(rel=_rel(schema, table), name=sql.Literal(name), cond=cond)
    )


def q_constraint_absent(schema: str, table: str, name: str) -> str:
    return render(
        sql.SQL(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = ({rel}) "
            "AND conname = {name})"
        ).format(rel=_rel(schema, table), name=sql.Literal(name))
    )


def q_index_valid(schema: str, name: str) -> str:
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT indisvalid AND indisready FROM pg_index "
            "WHERE indexrelid = ({rel})), false)"
        ).format(rel=_rel(schema, name))
    )


def q_relation_absent(schema: str, name: str) -> str:
    return render(sql.SQL("SELECT NOT EXISTS ({rel})").format(rel=_rel(schema, name)))


def q_trigger_exists(schema: str, table: str, trigger: str, *, exists: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT {neg} EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = ({rel}) "
            "AND tgname = {name})"
        ).format(
            neg=sql.SQL("" if exists else "NOT"), rel=_rel(schema, table), name=sql.Literal(trigger)
        )
    )


def q_index_state(schema: str, name: str) -> str:
    """(indisvalid, indisready) of an index, no row when it does not exist."""
    return render(
        sql.SQL("SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = ({rel})").format(
            rel=_rel(schema, name)
        )
    )


def explain(query: sql.Composable) -> str:
    return render(sql.SQL("EXPLAIN {}").format(query))


def q_compile_expression(schema: str, table: str | None, expr: str, type_: str | None) -> str:
    """A query that compiles ``expr`` (over ``table``'s rows) without running it."""
    value: sql.Composable = sql.SQL("({})").format(sql.SQL(expr))
    if type_:
        value = sql.SQL("{}::{}").format(value, sql.SQL(type_))
    q = sql.SQL("SELECT {}").format(value)
    if table:
        q = sql.SQL("{} FROM {} AS {}").format(q, qname(schema, table), sql.Identifier(table))
    return explain(q)


def q_compile_condition(schema: str, table: str, cond: str) -> str:
    return explain(
        sql.SQL("SELECT 1 FROM {} AS {} WHERE ({})").format(
            qname(schema, table), sql.Identifier(table), sql.SQL(cond)
        )
    )
