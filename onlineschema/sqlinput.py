"""Turn a SQL migration script into requested changes.

``parse_sql(text)`` reads a script (hand-written, or the output of Django's
``sqlmigrate``, Prisma's ``migration.sql``, Alembic's ``upgrade --sql``) with PostgreSQL's
own parser (pglast) and translates each statement, and each subcommand of an
``ALTER TABLE``, in order, into the change objects of :mod:`onlineschema.changes`. The
script means "make the schema and data look as if this had run at one instant"; nothing
is merged here: the planner normalizes (``AddColumn`` + ``Backfill`` + ``SetNotNull`` on
one column become one expand/contract sequence).

Names come from the parse tree, so quoted identifiers keep their case and characters
(``"Order"`` -> ``Order``) and unquoted ones are folded to lower case as PostgreSQL
does. A schema-qualified name sets the change's ``schema``. Expressions, types and index
elements are deparsed from the parse tree (pglast's ``RawStream``), so they are single
expressions by construction.

What is understood and dropped, on purpose:

* ``BEGIN`` / ``START TRANSACTION`` / ``COMMIT`` / ``END``: onlineschema decides the
  transactions itself (one short transaction per step).
* ``SET ...`` / ``RESET ...`` / ``SET CONSTRAINTS ...`` and pg_dump's
  ``SELECT pg_catalog.set_config(...)`` preamble. Each step runs in onlineschema's own
  session with its own settings (lock and statement timeouts especially). Caveat: a
  ``SET search_path`` in the script is ignored too, so unqualified names resolve with
  the connection's search_path; qualify names if the script relied on it. Refused
  instead: ``SET standard_conforming_strings = off`` (it would change how the rest of
  the script's string literals read) and ``SET ROLE`` / ``SET SESSION AUTHORIZATION``
  (they would change who owns the new objects: connect as that role instead).
* Comments.

Framework bookkeeping is kept, and run last: ``CREATE TABLE``, ``INSERT``, ``UPDATE``,
``DELETE`` and ``DROP TABLE`` of ``alembic_version``, ``django_migrations`` and
``_prisma_migrations`` (in any schema) become ``RunSQL(bookkeeping=True)``, which the
planner runs as written as the migration's last steps, in one transaction each, once
everything else is done (after ``onlineschema contract`` when the migration has a
contract phase): the framework then knows the revision ran, and only once it really did.

Accepted and ignored because the change objects have no field for them (the result is
stricter, never looser, than PostgreSQL): ``ALTER TABLE IF EXISTS`` and ``ONLY``,
``ADD COLUMN IF NOT EXISTS``, ``CREATE INDEX IF NOT EXISTS`` / ``ON ONLY`` /
``CONCURRENTLY`` (indexes are always built concurrently), ``UPDATE ONLY``, ``DROP INDEX
CONCURRENTLY``, the name of a ``CONSTRAINT n NOT NULL``.

Statements that only create new objects (``CREATE TABLE``, ``CREATE SEQUENCE``, ``CREATE
TYPE``, ``CREATE DOMAIN``, ``CREATE FUNCTION`` / ``PROCEDURE``, ``CREATE EXTENSION``,
``CREATE SCHEMA``, ``CREATE VIEW``, ``COMMENT ON``), and seed data for a table created
earlier in the same script (``INSERT`` / ``UPDATE`` / ``DELETE`` naming it exactly as its
``CREATE`` did, writing nowhere else), become ``RunSQL`` with the statement's original
text; ``touches`` names the existing tables they lock or read (a ``CREATE TABLE`` with
``REFERENCES u`` takes SHARE ROW EXCLUSIVE on ``u``). ``ALTER TABLE t ADD CONSTRAINT n
UNIQUE|PRIMARY KEY USING INDEX i`` is understood when ``i`` is a plain unique index made
by an earlier ``CREATE UNIQUE INDEX`` of the same script: the pair becomes one
``AddUnique``. Everything else raises :class:`UnsupportedStatement` listing every such
statement of the script with the reason, unless ``allow_raw=True``, which turns each
into ``RunSQL(raw=True)`` (run as written, flagged in the plan).

Example::

    >>> [c.describe() for c in parse_sql(
    ...     "ALTER TABLE orders ADD COLUMN status text;"
    ...     "UPDATE orders SET status = 'new';"
    ...     "ALTER TABLE orders ALTER COLUMN status SET NOT NULL;"
    ... )]
    ['add column orders.status text', "backfill orders: set status = 'new'", \
'set NOT NULL on orders.status']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast
from pglast.enums import (
    AlterTableType,
    ConstrType,
    DropBehavior,
    ObjectType,
    ReindexObjectType,
    SortByDir,
    SortByNulls,
    TransactionStmtKind,
)
from pglast.parser import ParseError, scan

from onlineschema.changes import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIdentity,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    Change,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    Reindex,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RunSQL,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
)
from onlineschema.errors import Refused, UnsupportedStatement
from onlineschema.expressions import deparse, walk

__all__ = ["SUPPORTED_TEXT", "parse_sql", "update_targets"]

SUPPORTED_TEXT = """\
Supported statements (t may be schema-qualified):
  ALTER TABLE t ADD [COLUMN] c type [DEFAULT e] [NULL | NOT NULL] [CHECK (...)] [UNIQUE]
      [PRIMARY KEY] [REFERENCES u [(col)] [ON DELETE/UPDATE action] [DEFERRABLE ...]]
  ALTER TABLE t ALTER [COLUMN] c SET NOT NULL | DROP NOT NULL | SET DEFAULT e
      | DROP DEFAULT | [SET DATA] TYPE type [USING e]
      | ADD GENERATED {ALWAYS | BY DEFAULT} AS IDENTITY [(sequence options)]
  ALTER TABLE t ADD [CONSTRAINT n] FOREIGN KEY (cols) REFERENCES u [(cols)]
      [ON DELETE/UPDATE action] [DEFERRABLE [INITIALLY DEFERRED]] [NOT VALID]
  ALTER TABLE t ADD [CONSTRAINT n] CHECK (condition) [NOT VALID]
  ALTER TABLE t ADD [CONSTRAINT n] UNIQUE (cols) | PRIMARY KEY (cols)
      [DEFERRABLE [INITIALLY DEFERRED]]
  ALTER TABLE t VALIDATE CONSTRAINT n | DROP CONSTRAINT [IF EXISTS] n
      | DROP [COLUMN] [IF EXISTS] c [CASCADE]  (several subcommands per ALTER TABLE are fine)
  ALTER TABLE t RENAME [COLUMN] a TO b | RENAME CONSTRAINT a TO b
  ALTER INDEX i RENAME TO j
  DROP TABLE [IF EXISTS] t [, ...] [CASCADE]
  CREATE [UNIQUE] INDEX [CONCURRENTLY] [name] ON t [USING method] (columns or expressions)
      [INCLUDE (cols)] [WHERE condition]
  DROP INDEX [CONCURRENTLY] [IF EXISTS] name [, ...]
  REINDEX INDEX [CONCURRENTLY] name                 (always rebuilt concurrently)
  UPDATE t SET c = e [, ...] [WHERE condition]     (run in batches)
  CREATE TABLE | SEQUENCE | TYPE | DOMAIN | FUNCTION | PROCEDURE | EXTENSION | SCHEMA | VIEW,
      COMMENT ON ...                                   (new objects: run as written)
  INSERT | UPDATE | DELETE on a table created earlier in the script (seed data: as written)
  rows of alembic_version, django_migrations, _prisma_migrations    (run last, as written)
  BEGIN, COMMIT, SET ..., SET CONSTRAINTS ..., SELECT set_config(...), comments: ignored"""

_NO_ACTION = "a"
_FK_ACTIONS = {
    "a": None,
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}

#: Statement classes that only create new objects: run as written (``RunSQL``).
_CREATE_NODES: tuple[type[Any], ...] = (
    ast.CreateStmt,
    ast.CreateSeqStmt,
    ast.CreateEnumStmt,
    ast.CompositeTypeStmt,
    ast.CreateRangeStmt,
    ast.CreateDomainStmt,
    ast.CreateFunctionStmt,
    ast.CreateExtensionStmt,
    ast.CreateSchemaStmt,
    ast.ViewStmt,
    ast.CommentStmt,
)

_BACKFILL_FORM = (
    "a backfill is `UPDATE t SET col = expression [, ...] [WHERE condition]`, run in"
    " batches (sub-queries inside the expressions are fine)"
)

_RAW_NOT_POSSIBLE = " (this statement cannot be run even with allow_raw)"


class _Unsupported(Exception):
    """A statement (or one of its subcommands) that has no online translation."""

    def __init__(self, reason: str, *, raw_ok: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw_ok = raw_ok


@dataclass
class _Problem:
    line: int
    text: str
    reason: str
    raw_ok: bool


# --------------------------------------------------------------------------- helpers


def _str(value: Any) -> str:
    return str(value)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _names(items: Any) -> tuple[str, ...]:
    """Strings of a list of ``String`` nodes (column lists)."""
    return tuple(str(item.sval) for item in items or ())


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _shorten(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _rangevar_name(rv: Any) -> str:
    return _qualified(_opt(rv.schemaname), _str(rv.relname))


def _object_name(parts: Sequence[Any]) -> tuple[str | None, str]:
    """(schema, name) of a dotted object name given as ``String`` nodes."""
    names = [str(p.sval) for p in parts]
    return (names[-2] if len(names) >= 2 else None), names[-1]


def _is_null_const(node: Any) -> bool:
    return isinstance(node, ast.A_Const) and bool(node.isnull)


# ------------------------------------------------------------------ statement text


def _statement_text(source: str, raw: Any) -> tuple[str, int]:
    """The original text of one statement (comments around it trimmed) and its line."""
    start = int(raw.stmt_location or 0)
    length = int(raw.stmt_len or 0)
    chunk = source[start : start + length] if length else source[start:]
    try:
        tokens = [t for t in scan(chunk) if t.name not in ("SQL_COMMENT", "C_COMMENT", "ASCII_59")]
    except ParseError:  # pragma: no cover - the text was just parsed successfully
        tokens = []
    if tokens:
        first, last = tokens[0].start, tokens[-1].end + 1
        text = chunk[first:last]
        start += first
    else:  # pragma: no cover - a parsed statement has tokens
        text = chunk.strip()
    return text, source.count("\n", 0, start) + 1


def _parse_error(source: str, exc: ParseError) -> Refused:
    message = str(exc.args[0]) if exc.args else str(exc)
    position = exc.args[1] if len(exc.args) > 1 else None
    if not isinstance(position, int):
        position = len(source.rstrip())
    position = max(0, min(position, len(source)))
    line_no = source.count("\n", 0, position) + 1
    line_start = source.rfind("\n", 0, position) + 1
    line_end = source.find("\n", position)
    line_text = source[line_start : line_end if line_end >= 0 else len(source)]
    column = position - line_start + 1
    fix = (
        "correct the SQL so that PostgreSQL accepts it (onlineschema reads it with"
        " PostgreSQL's own parser)"
    )
    if line_text.lstrip().startswith("\\"):
        fix = (
            "remove psql meta-commands (lines starting with a backslash, such as \\connect"
            " or \\restrict): they are not SQL"
        )
    return Refused(
        problem=(
            f"the SQL input could not be parsed: {message} at line {line_no}, column {column}:"
            f" {_shorten(line_text, 120)!r}"
        ),
        fix=fix,
    )


# ------------------------------------------------------------------------- touches


def _cte_names(node: Any) -> set[str]:
    return {str(n.ctename) for n in walk(node) if isinstance(n, ast.CommonTableExpr)}


def _referenced_relations(node: Any, exclude: Iterable[str] = ()) -> list[str]:
    """Tables (and other relations) a statement names, CTE names left out."""
    ctes = _cte_names(node) | set(exclude)
    out: list[str] = []
    for sub in walk(node):
        if isinstance(sub, ast.RangeVar) and sub.relname:
            if sub.schemaname is None and sub.relname in ctes:
                continue
            out.append(_rangevar_name(sub))
        elif isinstance(sub, ast.DropStmt) and sub.removeType in _RELATION_KINDS:
            for parts in sub.objects or ():
                schema, name = _object_name(parts)
                out.append(_qualified(schema, name))
    return out


_RELATION_KINDS = {
    ObjectType.OBJECT_TABLE,
    ObjectType.OBJECT_INDEX,
    ObjectType.OBJECT_VIEW,
    ObjectType.OBJECT_MATVIEW,
    ObjectType.OBJECT_SEQUENCE,
    ObjectType.OBJECT_FOREIGN_TABLE,
}


def _create_touches(node: Any) -> list[str]:
    """Existing tables that a statement creating new objects locks."""
    if isinstance(node, ast.CreateStmt):
        out: list[str] = []
        for sub in walk(node.tableElts):
            if isinstance(sub, ast.Constraint) and sub.pktable is not None:
                out.append(_rangevar_name(sub.pktable))
            elif isinstance(sub, ast.TableLikeClause) and sub.relation is not None:
                out.append(_rangevar_name(sub.relation))
        out.extend(_rangevar_name(rv) for rv in node.inhRelations or ())
        return out
    if isinstance(node, ast.CreateSeqStmt):
        for opt in node.options or ():
            if isinstance(opt, ast.DefElem) and opt.defname == "owned_by":
                arg: Any = opt.arg or ()
                parts = [str(p.sval) for p in arg]
                if len(parts) >= 2 and parts != ["none"]:
                    return [_qualified(parts[-3] if len(parts) >= 3 else None, parts[-2])]
        return []
    if isinstance(node, ast.CommentStmt):
        obj: Any = node.object
        if node.objtype == ObjectType.OBJECT_TABLE and isinstance(obj, tuple):
            return [_qualified(*_object_name(obj))]
        if (
            node.objtype in (ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABCONSTRAINT)
            and isinstance(obj, tuple)
            and len(obj) >= 2
        ):
            return [_qualified(*_object_name(obj[:-1]))]
        return []
    if isinstance(node, ast.ViewStmt):
        return _referenced_relations(node.query)
    if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
        return _referenced_relations(node)  # the tables a seed statement reads
    if isinstance(node, ast.CreateSchemaStmt):
        return [t for elt in node.schemaElts or () for t in _create_touches(elt)]
    return []


def _creates(node: Any, schema: str | None = None) -> list[str]:
    """Relations (tables, sequences, views) and types a statement creates (a type's name
    is taken in the namespace of relations too: a table has a row type of its name)."""
    rel: Any = None
    type_name: Any = None
    if isinstance(node, (ast.CreateEnumStmt, ast.CreateRangeStmt)):
        type_name = node.typeName
    elif isinstance(node, ast.CreateDomainStmt):
        type_name = node.domainname
    elif isinstance(node, ast.CompositeTypeStmt):
        rel = node.typevar
    if type_name:
        type_schema, name = _object_name(type_name)
        return [_qualified(type_schema or schema, name)]
    if isinstance(node, ast.CreateStmt):
        rel = node.relation
    elif isinstance(node, ast.CreateSeqStmt):
        rel = node.sequence
    elif isinstance(node, ast.ViewStmt):
        rel = node.view
    elif isinstance(node, ast.CreateSchemaStmt):
        inner = _opt(node.schemaname)
        return [name for elt in node.schemaElts or () for name in _creates(elt, inner)]
    if rel is None:
        return []
    return [_qualified(_opt(rel.schemaname) or schema, _str(rel.relname))]


def _needs_no_transaction(node: Any) -> bool:
    """Statements PostgreSQL refuses to run inside a transaction block."""
    if isinstance(node, ast.VacuumStmt):
        return bool(node.is_vacuumcmd)
    if isinstance(node, ast.ReindexStmt):
        opts = {str(p.defname) for p in node.params or () if isinstance(p, ast.DefElem)}
        return "concurrently" in opts or node.relation is None
    if isinstance(node, ast.ClusterStmt):
        return node.relation is None
    if isinstance(node, (ast.IndexStmt, ast.DropStmt)):
        return bool(node.concurrent)
    if isinstance(node, ast.AlterTableStmt):
        return any(
            isinstance(cmd.def_, ast.PartitionCmd) and bool(cmd.def_.concurrent)
            for cmd in node.cmds or ()
        )
    return isinstance(
        node,
        (
            ast.CreatedbStmt,
            ast.DropdbStmt,
            ast.AlterSystemStmt,
            ast.CreateTableSpaceStmt,
            ast.DropTableSpaceStmt,
        ),
    )


# ------------------------------------------------------------------ unsupported why

_STATEMENT_REASONS: dict[str, str] = {
    "ClusterStmt": "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock, blocking reads"
    " and writes for the whole copy",
    "LockStmt": "LOCK TABLE holds a lock for the whole transaction; onlineschema takes only"
    " short, time-limited locks itself",
    "TruncateStmt": "TRUNCATE takes an ACCESS EXCLUSIVE lock and removes every row",
    "DeleteStmt": "DELETE changes data in one long transaction; onlineschema only runs"
    " batched UPDATE backfills",
    "InsertStmt": "INSERT changes data; onlineschema only runs batched UPDATE backfills",
    "MergeStmt": "MERGE changes data in one long transaction; onlineschema only runs batched"
    " UPDATE backfills",
    "CopyStmt": "COPY moves data, it is not a schema change",
    "DoStmt": "a DO block can run anything: onlineschema cannot see what it locks",
    "CallStmt": "a procedure call can run anything: onlineschema cannot see what it locks",
    "GrantStmt": "privileges are not a schema change onlineschema plans; run GRANT/REVOKE yourself",
    "GrantRoleStmt": "role membership is not a schema change onlineschema plans",
    "AlterOwnerStmt": "ownership is not a schema change onlineschema plans",
    "CreateTrigStmt": "a new trigger on an existing table changes what running code does"
    " and locks the table (SHARE ROW EXCLUSIVE)",
    "CreatePolicyStmt": "a row-level security policy changes what running code can see",
    "AlterEnumStmt": "ALTER TYPE ... ADD VALUE / RENAME VALUE changes a type that running"
    " code uses",
    "AlterSeqStmt": "ALTER SEQUENCE changes an object that running code uses",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW is maintenance, not a schema change",
    "CreateTableAsStmt": "CREATE TABLE AS / SELECT INTO / CREATE MATERIALIZED VIEW copies"
    " data in one long statement",
    "AlterObjectSchemaStmt": "moving an object to another schema breaks running code that names it",
    "RuleStmt": "a rule on an existing table changes what running code does",
    "SelectStmt": "a SELECT is not a schema change",
    "VariableShowStmt": "SHOW is not a schema change",
    "ExplainStmt": "EXPLAIN is not a schema change",
}

_AT_REASONS: dict[str, str] = {
    "AT_SetTableSpace": "moving a table to another tablespace rewrites it under an ACCESS"
    " EXCLUSIVE lock, blocking reads and writes for the whole copy",
    "AT_SetLogged": "SET LOGGED rewrites the table under an ACCESS EXCLUSIVE lock",
    "AT_SetUnLogged": "SET UNLOGGED rewrites the table under an ACCESS EXCLUSIVE lock",
    "AT_AttachPartition": "ATTACH PARTITION scans the partition under lock to check its"
    " bound; add a matching CHECK constraint (NOT VALID, then VALIDATE) and attach it"
    " yourself",
    "AT_DetachPartition": "DETACH PARTITION locks the parent table (DETACH ... CONCURRENTLY"
    " cannot run in a migration transaction)",
    "AT_ChangeOwner": "ownership is not a schema change onlineschema plans",
    "AT_AddIdentity": "adding an identity to a column takes an ACCESS EXCLUSIVE lock",
    "AT_SetIdentity": "changing an identity takes an ACCESS EXCLUSIVE lock",
    "AT_DropIdentity": "dropping an identity takes an ACCESS EXCLUSIVE lock",
    "AT_SetExpression": "changing a generated column's expression rewrites the table",
    "AT_DropExpression": "DROP EXPRESSION takes an ACCESS EXCLUSIVE lock",
    "AT_AddInherit": "changing inheritance locks both tables",
    "AT_DropInherit": "changing inheritance locks both tables",
    "AT_AlterConstraint": "ALTER CONSTRAINT is not one of the supported forms",
    "AT_ReplicaIdentity": "REPLICA IDENTITY is replication configuration, not a schema"
    " change onlineschema plans",
}


def _alter_table_reason(cmd: Any) -> str:
    name = getattr(cmd.subtype, "name", str(cmd.subtype))
    try:
        label = deparse(cmd)
    except Exception:  # pragma: no cover - pglast deparses every subcommand it parses
        label = name
    if name in _AT_REASONS:
        return f"{label}: {_AT_REASONS[name]}"
    if "Trig" in name or "Rule" in name:
        return f"{label}: enabling or disabling triggers/rules changes what running code does"
    if "RowSecurity" in name:
        return f"{label}: row-level security changes what running code can see"
    return f"{label}: not one of the ALTER TABLE forms onlineschema runs online"


def _statement_reason(node: Any) -> tuple[str, bool]:
    """Why a statement is unsupported, and whether allow_raw may run it as written."""
    kind = type(node).__name__
    if isinstance(node, ast.VacuumStmt):
        opts = {str(o.defname).lower() for o in node.options or () if isinstance(o, ast.DefElem)}
        if "full" in opts:
            return (
                "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock, blocking"
                " reads and writes for the whole copy (use pg_repack or pg_squeeze)",
                True,
            )
        return "VACUUM / ANALYZE is maintenance, not a schema change", True
    if isinstance(node, ast.TransactionStmt):
        return (
            "onlineschema runs each step in its own transaction; ROLLBACK, SAVEPOINT and"
            " two-phase commands have no meaning in a migration script",
            False,
        )
    if isinstance(node, ast.CopyStmt) and not node.filename:
        return "COPY ... FROM STDIN / TO STDOUT needs a client to feed or read the data", False
    if isinstance(node, ast.DiscardStmt):
        return "DISCARD would reset onlineschema's own session", False
    if isinstance(node, ast.DropStmt):
        kind_name = getattr(node.removeType, "name", "").removeprefix("OBJECT_")
        return (
            f"DROP {kind_name.replace('_', ' ')} is not one of the supported forms (only"
            " DROP TABLE and DROP INDEX are)",
            True,
        )
    if isinstance(node, ast.RenameStmt):
        if node.renameType == ObjectType.OBJECT_TABLE:
            return (
                "renaming a table breaks every running query that uses the old name, and"
                " onlineschema has no expand/contract for table renames",
                True,
            )
        return (
            "only RENAME COLUMN, RENAME CONSTRAINT and ALTER INDEX ... RENAME are supported"
            " among renames",
            True,
        )
    if kind in _STATEMENT_REASONS:
        return _STATEMENT_REASONS[kind], True
    return "it is not one of the statements onlineschema can run online", True


# -------------------------------------------------------------------- translation


class _Translator:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        #: relations created by earlier statements of the script, as written
        self.created: set[str] = set()

    def is_new(self, rel: Any) -> bool:
        """Was ``rel`` (a RangeVar) created earlier in this script, named the same way?"""
        return rel is not None and _rangevar_name(rel) in self.created

    # -- dispatch -------------------------------------------------------------------

    def statement(self, node: Any) -> list[Change] | None:
        """Changes for one statement; [] when it is understood and dropped; None when
        it only creates new objects (the caller emits RunSQL)."""
        if (
            isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt))
            and self.is_new(node.relation)
            and not any(  # a data-changing WITH could write to existing tables
                isinstance(sub, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt))
                for sub in walk(node)
                if sub is not node
            )
        ):
            # seed data for a table this migration creates: nothing uses it yet, so the
            # statement runs as written (one transactional step after the CREATE)
            return None
        if isinstance(node, (ast.TransactionStmt,)):
            return self._transaction(node)
        if isinstance(node, ast.VariableSetStmt):
            return self._set(node)
        if isinstance(node, ast.ConstraintsSetStmt):
            return []
        if isinstance(node, ast.SelectStmt) and _is_set_config(node):
            return []
        if isinstance(node, ast.AlterTableStmt):
            return self._alter_table(node)
        if isinstance(node, ast.RenameStmt):
            return self._rename(node)
        if isinstance(node, ast.DropStmt):
            return self._drop(node)
        if isinstance(node, ast.IndexStmt):
            return self._create_index(node)
        if isinstance(node, ast.ReindexStmt):
            return [self._reindex(node)]
        if isinstance(node, ast.UpdateStmt):
            return [self._update(node)]
        if isinstance(node, ast.CreateStmt) and node.partbound is not None:
            raise _Unsupported(
                "CREATE TABLE ... PARTITION OF takes an ACCESS EXCLUSIVE lock on the parent"
                " table (and may scan its default partition)"
            )
        if isinstance(node, _CREATE_NODES) or (
            isinstance(node, ast.DefineStmt) and node.kind == ObjectType.OBJECT_TYPE
        ):
            return None
        reason, raw_ok = _statement_reason(node)
        raise _Unsupported(reason, raw_ok=raw_ok)

    def _transaction(self, node: Any) -> list[Change]:
        if node.kind in (
            TransactionStmtKind.TRANS_STMT_BEGIN,
            TransactionStmtKind.TRANS_STMT_START,
            TransactionStmtKind.TRANS_STMT_COMMIT,
        ):
            return []
        reason, raw_ok = _statement_reason(node)
        raise _Unsupported(reason, raw_ok=raw_ok)

    def _set(self, node: Any) -> list[Change]:
        name = str(node.name or "").lower()
        if name in ("role", "session_authorization"):
            raise _Unsupported(
                "SET ROLE / SET SESSION AUTHORIZATION would change who owns the new objects;"
                " connect as that role instead",
                raw_ok=False,
            )
        if name == "standard_conforming_strings":
            values = [deparse(a).strip("'").lower() for a in node.args or () if a is not None]
            if any(v in ("off", "false", "0", "no") for v in values):
                raise _Unsupported(
                    "standard_conforming_strings = off changes how the string literals of"
                    " the rest of the script read; remove it and write the literals with"
                    " E'...' where backslash escapes are meant",
                    raw_ok=False,
                )
        return []

    # -- ALTER TABLE ----------------------------------------------------------------

    def _alter_table(self, node: Any) -> list[Change]:
        if node.objtype != ObjectType.OBJECT_TABLE:
            what = getattr(node.objtype, "name", "").removeprefix("OBJECT_").replace("_", " ")
            raise _Unsupported(f"ALTER {what} is not supported; only ALTER TABLE is")
        rel = node.relation
        table, schema = _str(rel.relname), _opt(rel.schemaname)
        out: list[Change] = []
        reasons: list[str] = []
        consumed: list[AddIndex] = []
        for cmd in node.cmds or ():
            try:
                out.extend(self._alter_table_cmd(cmd, table, schema, consumed))
            except _Unsupported as exc:
                reasons.append(exc.reason)
        if reasons:
            raise _Unsupported("; ".join(reasons))
        if consumed:
            self.changes = [c for c in self.changes if not any(c is i for i in consumed)]
        return out

    def _alter_table_cmd(
        self,
        cmd: Any,
        table: str,
        schema: str | None,
        consumed: list[AddIndex],
    ) -> list[Change]:
        sub = cmd.subtype
        column = _opt(cmd.name)
        if sub == AlterTableType.AT_AddColumn:
            return _add_column(cmd.def_, table, schema)
        if sub == AlterTableType.AT_ColumnDefault and column is not None:
            if cmd.def_ is None:
                return [DropDefault(table, column, schema=schema)]
            return [SetDefault(table, column, deparse(cmd.def_), schema=schema)]
        if sub == AlterTableType.AT_SetNotNull and column is not None:
            return [SetNotNull(table, column, schema=schema)]
        if sub == AlterTableType.AT_DropNotNull and column is not None:
            return [DropNotNull(table, column, schema=schema)]
        if sub == AlterTableType.AT_AlterColumnType and column is not None:
            return [_alter_type(cmd.def_, table, column, schema)]
        if sub == AlterTableType.AT_AddConstraint:
            return self._add_constraint(cmd.def_, table, schema, consumed)
        if sub == AlterTableType.AT_AddIdentity and column is not None:
            return [_identity(cmd.def_, table, column, schema)]
        if sub == AlterTableType.AT_ValidateConstraint and column is not None:
            return [ValidateConstraint(table, column, schema=schema)]
        if sub == AlterTableType.AT_DropConstraint and column is not None:
            _no_cascade(cmd, f"DROP CONSTRAINT {column}")
            return [DropConstraint(table, column, if_exists=bool(cmd.missing_ok), schema=schema)]
        if sub == AlterTableType.AT_DropColumn and column is not None:
            # CASCADE: the planner refuses it when it would take more than the column's
            # own indexes and constraints
            return [
                DropColumn(
                    table,
                    column,
                    if_exists=bool(cmd.missing_ok),
                    schema=schema,
                    cascade=cmd.behavior == DropBehavior.DROP_CASCADE,
                )
            ]
        raise _Unsupported(_alter_table_reason(cmd))

    def _add_constraint(
        self,
        con: Any,
        table: str,
        schema: str | None,
        consumed: list[AddIndex],
    ) -> list[Change]:
        ct = con.contype
        name = _opt(con.conname)
        if ct == ConstrType.CONSTR_FOREIGN:
            return [_foreign_key(con, table, schema, _names(con.fk_attrs))]
        if ct == ConstrType.CONSTR_CHECK:
            return [_check(con, table, schema)]
        if ct in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
            if con.indexname:
                return [self._using_index(con, table, schema, consumed)]
            return [_unique(con, table, schema, _names(con.keys))]
        if ct == ConstrType.CONSTR_NOTNULL:
            keys = _names(con.keys)
            if con.skip_validation or con.is_no_inherit or len(keys) != 1:
                raise _Unsupported(
                    "ADD CONSTRAINT ... NOT NULL with NOT VALID or NO INHERIT has no online"
                    " equivalent here; use ADD CONSTRAINT n CHECK (col IS NOT NULL) NOT VALID,"
                    " then VALIDATE CONSTRAINT n"
                )
            return [SetNotNull(table, keys[0], schema=schema)]
        if ct == ConstrType.CONSTR_EXCLUSION:
            label = f"EXCLUDE constraint {name}" if name else "an EXCLUDE constraint"
            raise _Unsupported(
                f"{label}: its index cannot be built concurrently and attached, so adding it"
                " blocks writes while the index builds"
            )
        raise _Unsupported(f"this kind of constraint ({getattr(ct, 'name', ct)}) is not supported")

    def _using_index(
        self,
        con: Any,
        table: str,
        schema: str | None,
        consumed: list[AddIndex],
    ) -> AddUnique:
        index_name = _str(con.indexname)
        primary = con.contype == ConstrType.CONSTR_PRIMARY
        what = "PRIMARY KEY" if primary else "UNIQUE"
        for change in reversed(self.changes):
            if (
                isinstance(change, AddIndex)
                and change.name == index_name
                and change.schema == schema
            ):
                if (
                    change.table == table
                    and change.unique
                    and change.columns
                    and not change.expressions
                    and not change.where
                    and not change.include
                    and change.using == "btree"
                    and not any(change is c for c in consumed)
                ):
                    consumed.append(change)
                    return AddUnique(
                        table,
                        change.columns,
                        name=_opt(con.conname) or index_name,
                        primary_key=primary,
                        schema=schema,
                        deferrable=bool(con.deferrable or con.initdeferred),
                        initially_deferred=bool(con.initdeferred),
                    )
                break
        raise _Unsupported(
            f"ADD CONSTRAINT ... {what} USING INDEX {index_name}: onlineschema builds the"
            " unique index itself (concurrently) and attaches it; write"
            f" `ALTER TABLE ... ADD CONSTRAINT name {what} (columns)` instead (a USING INDEX"
            " is understood only right after a CREATE UNIQUE INDEX of plain columns on the"
            " same table in the same script)"
        )

    # -- other statements -----------------------------------------------------------

    def _rename(self, node: Any) -> list[Change]:
        if (
            node.renameType == ObjectType.OBJECT_COLUMN
            and node.relationType == ObjectType.OBJECT_TABLE
            and node.relation is not None
        ):
            rel = node.relation
            return [
                RenameColumn(
                    _str(rel.relname),
                    _str(node.subname),
                    _str(node.newname),
                    schema=_opt(rel.schemaname),
                )
            ]
        rel = node.relation
        if node.renameType == ObjectType.OBJECT_INDEX and rel is not None and not node.missing_ok:
            return [RenameIndex(_str(rel.relname), _str(node.newname), schema=_opt(rel.schemaname))]
        if node.renameType == ObjectType.OBJECT_TABCONSTRAINT and rel is not None:
            return [
                RenameConstraint(
                    _str(rel.relname),
                    _str(node.subname),
                    _str(node.newname),
                    schema=_opt(rel.schemaname),
                )
            ]
        reason, raw_ok = _statement_reason(node)
        raise _Unsupported(reason, raw_ok=raw_ok)

    def _drop(self, node: Any) -> list[Change]:
        kind = node.removeType
        if kind not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX):
            reason, raw_ok = _statement_reason(node)
            raise _Unsupported(reason, raw_ok=raw_ok)
        word = "TABLE" if kind == ObjectType.OBJECT_TABLE else "INDEX"
        cascade = node.behavior == DropBehavior.DROP_CASCADE
        # DROP TABLE ... CASCADE: the planner refuses it when it would take more than the
        # table's own objects (other tables' foreign keys; views are refused anyway)
        if cascade and kind != ObjectType.OBJECT_TABLE:
            raise _Unsupported(
                f"DROP {word} ... CASCADE also drops whatever depends on it (views, foreign"
                " keys...); drop those explicitly, then drop without CASCADE"
            )
        out: list[Change] = []
        for parts in node.objects or ():
            if len(parts) > 3:
                raise _Unsupported(f"improper qualified name in DROP {word}")
            schema, name = _object_name(parts)
            if kind == ObjectType.OBJECT_TABLE:
                if name == "alembic_version":
                    continue
                out.append(
                    DropTable(name, if_exists=bool(node.missing_ok), schema=schema, cascade=cascade)
                )
            else:
                out.append(DropIndex(name, if_exists=bool(node.missing_ok), schema=schema))
        return out

    def _reindex(self, node: Any) -> Change:
        if node.kind != ReindexObjectType.REINDEX_OBJECT_INDEX:
            what = node.kind.name.removeprefix("REINDEX_OBJECT_")
            raise _Unsupported(
                f"REINDEX {what} rebuilds many indexes, blocking writes while it does; name"
                " each index instead: REINDEX INDEX CONCURRENTLY name (one statement per"
                " index), which onlineschema runs online"
            )
        options = {d.defname for d in node.params or ()} - {"concurrently", "verbose"}
        if options:
            raise _Unsupported(f"REINDEX option(s) {', '.join(sorted(options))} are not supported")
        return Reindex(_str(node.relation.relname), schema=_opt(node.relation.schemaname))

    def _create_index(self, node: Any) -> list[Change]:
        problems: list[str] = []
        if node.nulls_not_distinct:
            problems.append(
                "NULLS NOT DISTINCT (AddIndex has no such option; use a unique index on"
                " COALESCE(...) expressions, or a partial index)"
            )
        if node.options:
            problems.append("WITH (storage parameters) (AddIndex has no such option)")
        if node.tableSpace:
            problems.append("TABLESPACE (indexes are built in the default tablespace)")
        if problems:
            raise _Unsupported("CREATE INDEX with " + " and ".join(problems) + " is not supported")
        rel = node.relation
        plain: list[str | None] = []
        deparsed: list[str] = []
        for elem in node.indexParams or ():
            plain.append(_str(elem.name) if _is_plain_column(elem) else None)
            deparsed.append(deparse(elem))
        first_expr = next((i for i, p in enumerate(plain) if p is None), len(plain))
        if any(p is not None for p in plain[first_expr:]):
            columns: tuple[str, ...] = ()
            expressions = tuple(deparsed)
        else:
            columns = tuple(p for p in plain if p is not None)
            expressions = tuple(deparsed[first_expr:])
        include: list[str] = []
        for elem in node.indexIncludingParams or ():
            if not _is_plain_column(elem):
                raise _Unsupported("INCLUDE takes plain column names only")
            include.append(_str(elem.name))
        return [
            AddIndex(
                _str(rel.relname),
                columns=columns,
                expressions=expressions,
                name=_opt(node.idxname),
                unique=bool(node.unique),
                where=deparse(node.whereClause) if node.whereClause is not None else None,
                using=_str(node.accessMethod or "btree"),
                include=tuple(include),
                schema=_opt(rel.schemaname),
            )
        ]

    def _update(self, node: Any) -> Backfill:
        rel = node.relation
        problems: list[str] = []
        if node.withClause is not None:
            problems.append("WITH")
        if node.fromClause:
            problems.append("FROM")
        if node.returningClause is not None:
            problems.append("RETURNING")
        if rel.alias is not None:
            problems.append("a table alias (write the table name instead)")
        if problems:
            raise _Unsupported(
                f"{', '.join(problems)} in an UPDATE is not supported; {_BACKFILL_FORM}"
            )
        pairs: list[tuple[str, str]] = []
        for target in node.targetList or ():
            col = _str(target.name)
            if isinstance(target.val, ast.MultiAssignRef):
                raise _Unsupported(
                    "UPDATE ... SET (a, b) = (...) is not supported; write SET a = ..., b = ..."
                )
            if target.indirection:
                raise _Unsupported(
                    f"assigning to part of column {col} ({col}[...] or {col}.field) is not"
                    " supported in a backfill; assign the whole column"
                )
            if isinstance(target.val, ast.SetToDefault):
                raise _Unsupported(
                    f"assigning DEFAULT to column {col} is not supported in a backfill; write"
                    " the default expression itself"
                )
            if any(col == c for c, _ in pairs):
                raise _Unsupported(f"UPDATE assigns column {col} twice")
            pairs.append((col, deparse(target.val)))
        where = node.whereClause
        if where is not None and any(isinstance(n, ast.CurrentOfExpr) for n in walk(where)):
            raise _Unsupported("UPDATE ... WHERE CURRENT OF is not supported")
        return Backfill(
            _str(rel.relname),
            set=tuple(pairs),
            where=deparse(where) if where is not None else None,
            schema=_opt(rel.schemaname),
        )


#: tables in which frameworks record the migrations they ran
BOOKKEEPING_TABLES = frozenset({"alembic_version", "django_migrations", "_prisma_migrations"})


def _is_framework_bookkeeping(node: Any) -> bool:
    if isinstance(node, (ast.CreateStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
        rel = node.relation
        return (
            rel is not None
            and rel.relname in BOOKKEEPING_TABLES
            and not (isinstance(node, ast.CreateStmt) and node.partbound is not None)
        )
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
        objects = node.objects or ()
        return bool(objects) and all(
            _object_name(parts)[1] in BOOKKEEPING_TABLES for parts in objects
        )
    return False


def _is_set_config(node: Any) -> bool:
    """``SELECT pg_catalog.set_config(...)`` (pg_dump's preamble), nothing else."""
    if node.fromClause or node.whereClause or node.larg or node.withClause:
        return False
    targets: Any = node.targetList or ()
    if len(targets) != 1 or not isinstance(targets[0].val, ast.FuncCall):
        return False
    call = targets[0].val
    names = _names(call.funcname)
    return names in (("set_config",), ("pg_catalog", "set_config")) and all(
        isinstance(arg, ast.A_Const) for arg in call.args or ()
    )


def _is_plain_column(elem: Any) -> bool:
    return (
        isinstance(elem, ast.IndexElem)
        and elem.name is not None
        and elem.expr is None
        and not elem.opclass
        and not elem.opclassopts
        and not elem.collation
        and elem.ordering == SortByDir.SORTBY_DEFAULT
        and elem.nulls_ordering == SortByNulls.SORTBY_NULLS_DEFAULT
    )


def _no_cascade(cmd: Any, what: str) -> None:
    if cmd.behavior == DropBehavior.DROP_CASCADE:
        raise _Unsupported(
            f"{what} CASCADE also drops whatever depends on it; drop those explicitly, then"
            " drop without CASCADE"
        )


def _type_name(type_name: Any, what: str) -> str:
    if type_name is None:
        raise _Unsupported(f"{what} has no type")
    return deparse(type_name)


def _alter_type(coldef: Any, table: str, column: str, schema: str | None) -> AlterColumnType:
    if coldef.collClause is not None:
        raise _Unsupported(
            f"ALTER COLUMN {column} TYPE ... COLLATE is not supported (AlterColumnType has no"
            " collation)"
        )
    using = coldef.raw_default
    return AlterColumnType(
        table,
        column,
        _type_name(coldef.typeName, f"ALTER COLUMN {column} TYPE"),
        using=deparse(using) if using is not None else None,
        schema=schema,
    )


def _identity(con: Any, table: str, column: str, schema: str | None) -> AddIdentity:
    text = deparse(con)
    _, _, options = text.partition("AS IDENTITY")
    options = options.strip()
    return AddIdentity(
        table,
        column,
        always=con.generated_when == "a",
        options=options[1:-1].strip() if options.startswith("(") else None,
        schema=schema,
    )


def _fk_action(code: Any, which: str) -> str | None:
    key = str(code or _NO_ACTION)
    if key in ("", "\x00"):
        key = _NO_ACTION
    if key not in _FK_ACTIONS:  # pragma: no cover - PostgreSQL has no other actions
        raise _Unsupported(f"unknown ON {which} action {key!r}")
    return _FK_ACTIONS[key]


def _foreign_key(
    con: Any,
    table: str,
    schema: str | None,
    columns: tuple[str, ...],
    *,
    deferrable: bool | None = None,
    initially_deferred: bool | None = None,
) -> AddForeignKey:
    if str(con.fk_matchtype or "s") not in ("s", "\x00", ""):
        raise _Unsupported(
            "MATCH FULL / MATCH PARTIAL foreign keys are not supported (AddForeignKey is"
            " MATCH SIMPLE)"
        )
    if con.fk_del_set_cols:
        raise _Unsupported("ON DELETE SET NULL/SET DEFAULT (columns) is not supported")
    if con.fk_with_period or con.pk_with_period:
        raise _Unsupported("temporal foreign keys (PERIOD) are not supported")
    if not con.is_enforced:
        raise _Unsupported("NOT ENFORCED foreign keys are not supported")
    pk = con.pktable
    return AddForeignKey(
        table,
        columns,
        _str(pk.relname),
        ref_columns=_names(con.pk_attrs),
        name=_opt(con.conname),
        on_delete=_fk_action(con.fk_del_action, "DELETE"),
        on_update=_fk_action(con.fk_upd_action, "UPDATE"),
        validate=not con.skip_validation,
        deferrable=bool(con.deferrable) if deferrable is None else deferrable,
        initially_deferred=(
            bool(con.initdeferred) if initially_deferred is None else initially_deferred
        ),
        schema=schema,
        ref_schema=_opt(pk.schemaname),
    )


def _check(con: Any, table: str, schema: str | None) -> AddCheck:
    if con.is_no_inherit:
        raise _Unsupported("CHECK ... NO INHERIT is not supported")
    if not con.is_enforced:
        raise _Unsupported("NOT ENFORCED check constraints are not supported")
    return AddCheck(
        table,
        deparse(con.raw_expr),
        name=_opt(con.conname),
        validate=not con.skip_validation,
        schema=schema,
    )


def _unique(
    con: Any,
    table: str,
    schema: str | None,
    columns: tuple[str, ...],
    *,
    deferrable: bool | None = None,
    initially_deferred: bool | None = None,
) -> AddUnique:
    primary = con.contype == ConstrType.CONSTR_PRIMARY
    what = "PRIMARY KEY" if primary else "UNIQUE"
    problems = []
    if con.nulls_not_distinct:
        problems.append("NULLS NOT DISTINCT")
    if con.including:
        problems.append("INCLUDE")
    if con.options:
        problems.append("WITH (storage parameters)")
    if con.indexspace:
        problems.append("USING INDEX TABLESPACE")
    if con.without_overlaps:
        problems.append("WITHOUT OVERLAPS")
    if problems:
        raise _Unsupported(
            f"{what} with {', '.join(problems)} is not supported (AddUnique has no such option)"
        )
    deferrable = bool(con.deferrable) if deferrable is None else deferrable
    initially_deferred = (
        bool(con.initdeferred) if initially_deferred is None else initially_deferred
    )
    return AddUnique(
        table,
        columns,
        name=_opt(con.conname),
        primary_key=primary,
        schema=schema,
        deferrable=deferrable or initially_deferred,
        initially_deferred=initially_deferred,
    )


_DEFERRAL_ATTRS = {
    ConstrType.CONSTR_ATTR_DEFERRABLE: ("deferrable", True),
    ConstrType.CONSTR_ATTR_NOT_DEFERRABLE: ("deferrable", False),
    ConstrType.CONSTR_ATTR_DEFERRED: ("initially_deferred", True),
    ConstrType.CONSTR_ATTR_IMMEDIATE: ("initially_deferred", False),
}


def _add_column(coldef: Any, table: str, schema: str | None) -> list[Change]:
    column = _str(coldef.colname)
    problems: list[str] = []
    if coldef.collClause is not None:
        problems.append("COLLATE (AddColumn has no collation)")
    if coldef.compression:
        problems.append("COMPRESSION")
    if coldef.storage_name:
        problems.append("STORAGE")
    if coldef.fdwoptions:
        problems.append("OPTIONS")
    nullable: bool | None = None
    default: str | None = None
    identity: AddIdentity | None = None
    # Constraints to add after the column, with deferral attributes that follow them.
    pending: list[tuple[Any, dict[str, bool]]] = []
    for con in coldef.constraints or ():
        ct = con.contype
        if ct == ConstrType.CONSTR_NULL:
            if nullable is False:
                problems.append("conflicting NULL/NOT NULL")
            nullable = True
        elif ct == ConstrType.CONSTR_NOTNULL:
            if nullable is True:
                problems.append("conflicting NULL/NOT NULL")
            if con.is_no_inherit:
                problems.append("NOT NULL NO INHERIT")
            nullable = False
        elif ct == ConstrType.CONSTR_DEFAULT:
            default = None if _is_null_const(con.raw_expr) else deparse(con.raw_expr)
        elif ct in (
            ConstrType.CONSTR_CHECK,
            ConstrType.CONSTR_UNIQUE,
            ConstrType.CONSTR_PRIMARY,
            ConstrType.CONSTR_FOREIGN,
        ):
            pending.append((con, {}))
        elif ct in _DEFERRAL_ATTRS:
            attr, value = _DEFERRAL_ATTRS[ct]
            if not pending or pending[-1][0].contype not in (
                ConstrType.CONSTR_FOREIGN,
                ConstrType.CONSTR_UNIQUE,
                ConstrType.CONSTR_PRIMARY,
            ):
                problems.append("misplaced DEFERRABLE/INITIALLY clause")
            else:
                pending[-1][1][attr] = value
        elif ct == ConstrType.CONSTR_ATTR_ENFORCED:
            pass
        elif ct == ConstrType.CONSTR_ATTR_NOT_ENFORCED:
            problems.append("NOT ENFORCED")
        elif ct == ConstrType.CONSTR_IDENTITY:
            # a NOT NULL column, then the identity: the planner allows that only on an
            # empty table (on one with rows PostgreSQL would rewrite it)
            identity = _identity(con, table, column, schema)
            nullable = False
        elif ct == ConstrType.CONSTR_GENERATED:
            problems.append(
                "GENERATED ALWAYS AS (...) (adding a generated column rewrites the table under"
                " an ACCESS EXCLUSIVE lock)"
            )
        else:
            problems.append(f"constraint {getattr(ct, 'name', ct)}")
    if problems:
        raise _Unsupported(
            f"ADD COLUMN {column} with {', '.join(dict.fromkeys(problems))} is not supported"
        )
    type_name = _type_name(coldef.typeName, f"ADD COLUMN {column}")
    if any(con.contype == ConstrType.CONSTR_PRIMARY for con, _ in pending):
        nullable = False  # PRIMARY KEY implies NOT NULL
    out: list[Change] = [
        AddColumn(
            table,
            column,
            type_name,
            nullable=nullable is not False,
            default=default,
            schema=schema,
        )
    ]
    if identity is not None:
        out.append(identity)
    for con, attrs in pending:
        ct = con.contype
        if ct == ConstrType.CONSTR_FOREIGN:
            cols = _names(con.fk_attrs) or (column,)
            out.append(
                _foreign_key(
                    con,
                    table,
                    schema,
                    cols,
                    deferrable=attrs.get("deferrable"),
                    initially_deferred=attrs.get("initially_deferred"),
                )
            )
        elif ct == ConstrType.CONSTR_CHECK:
            out.append(_check(con, table, schema))
        else:
            out.append(
                _unique(
                    con,
                    table,
                    schema,
                    (column,),
                    deferrable=attrs.get("deferrable"),
                    initially_deferred=attrs.get("initially_deferred"),
                )
            )
    return out


# ------------------------------------------------------------------- raw statements


def update_targets(text: str) -> list[tuple[str | None, str, tuple[str, ...]]]:
    """``(schema, table, columns)`` that the ``UPDATE`` statements of ``text`` set (for a
    raw statement run as written: its UPDATE fills those columns); [] for anything else."""
    try:
        statements = pglast.parse_sql(text)
    except ParseError:
        return []
    out: list[tuple[str | None, str, tuple[str, ...]]] = []
    for raw in statements:
        node = raw.stmt
        if isinstance(node, ast.UpdateStmt) and node.relation is not None:
            columns = tuple(_str(t.name) for t in node.targetList or () if t.name)
            out.append((_opt(node.relation.schemaname), _str(node.relation.relname), columns))
    return out


# --------------------------------------------------------------------- entry point


def _unsupported_error(problems: Sequence[_Problem], allow_raw: bool) -> UnsupportedStatement:
    count = len(problems)
    head = (
        "this statement cannot be run online:"
        if count == 1
        else f"{count} statements cannot be run online:"
    )
    lines = [head]
    for p in problems:
        lines.append(f"  - line {p.line}: {_shorten(p.text)!r}")
        lines.append(f"    why: {p.reason}{'' if p.raw_ok else _RAW_NOT_POSSIBLE}")
    if any(p.raw_ok for p in problems) and not allow_raw:
        how = (
            "rewrite each as one of the supported forms below, run it yourself outside"
            " onlineschema, or pass allow_raw (--allow-raw) to run it as written (flagged"
            " as raw in the plan, not made safe)."
        )
    else:
        how = "rewrite or remove each as described, using the supported forms below."
    return UnsupportedStatement(problem="\n".join(lines), fix=f"{how}\n{SUPPORTED_TEXT}")


def parse_sql(text: str, *, allow_raw: bool = False) -> list[Change]:
    """Translate a SQL script into requested changes, statement by statement, in order.

    A script with nothing to do on PostgreSQL (no statements, or only comments, ``SET``,
    ``BEGIN`` / ``COMMIT``) gives ``[]``: an empty migration, planned as an empty plan
    and recorded as done.

    Raises :class:`Refused` if the input cannot be parsed, and
    :class:`UnsupportedStatement` (listing all of them) if statements have no online
    translation, unless ``allow_raw`` turns each into ``RunSQL(raw=True)``.
    """
    if "\x00" in text:
        # The parser reads a C string: everything after a NUL would be silently lost.
        where = text.index("\x00")
        raise Refused(
            f"the SQL input contains a NUL character (line {text.count(chr(10), 0, where) + 1})",
            fix="remove it: PostgreSQL does not accept NUL characters in SQL text",
        )
    try:
        raw_statements = pglast.parse_sql(text)
    except ParseError as exc:
        raise _parse_error(text, exc) from None
    translator = _Translator()
    problems: list[_Problem] = []
    for raw in raw_statements:
        stmt_text, line = _statement_text(text, raw)
        node = raw.stmt
        if _is_framework_bookkeeping(node):
            creates = _dedupe(_creates(node))
            touches = () if creates else _dedupe(_referenced_relations(node))
            translator.changes.append(
                RunSQL(sql=stmt_text, touches=touches, creates=creates, bookkeeping=True)
            )
            continue
        try:
            changes = translator.statement(node)
        except _Unsupported as exc:
            if allow_raw and exc.raw_ok:
                translator.changes.append(
                    RunSQL(
                        sql=stmt_text,
                        raw=True,
                        touches=_dedupe(_referenced_relations(node)),
                        transactional=not _needs_no_transaction(node),
                    )
                )
            else:
                problems.append(_Problem(line, stmt_text, exc.reason, exc.raw_ok))
            continue
        if changes is None:
            creates = _dedupe(_creates(node))
            translator.created.update(creates)
            touches = tuple(
                t
                for t in _dedupe(_create_touches(node))
                if t not in creates and t not in translator.created
            )
            translator.changes.append(
                RunSQL(sql=stmt_text, raw=False, touches=touches, creates=creates)
            )
        else:
            translator.changes.extend(changes)
    if problems:
        raise _unsupported_error(problems, allow_raw)
    return translator.changes
