"""Every name the planner generates, in one place: the planner, the recipes, the column
copy and the abort actions must agree on them (a step's undo and a later migration find
the objects by these names).

The names PostgreSQL itself gives to indexes and constraints created without one come
from ``ChooseRelationName`` / ``ChooseConstraintName`` (``makeObjectName`` truncation and a
number on a clash): a framework's plain run and ours must end with the same names, so
they are chosen here the same way (``NamesInUse``, from the names in use that the catalog
reader found). Names of onlineschema's own helpers keep their own scheme
(``helper_name``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast

MAX_IDENTIFIER_BYTES = 63


def helper_name(*parts: str) -> str:
    """A deterministic name for an object the plan creates, at most 63 bytes."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - 9].decode(errors="ignore")
    return f"{head}_{digest}"


def auto_name(table: str, columns: Sequence[str], suffix: str) -> str:
    """PostgreSQL's own naming (``orders_status_idx``), shortened as PostgreSQL shortens
    it (``make_object_name``; ``NamesInUse`` also numbers it on a clash)."""
    return make_object_name(table, name_addition(columns) if columns else None, suffix)


def not_null_name(table: str, column: str) -> str:
    """The name PostgreSQL 18 gives the NOT NULL constraint of ``table.column`` (plans
    add it so: ``NOT NULL ... NOT VALID``)."""
    return make_object_name(table, column, "not_null")


def nn_check_name(table: str, column: str) -> str:
    """The helper ``CHECK (column IS NOT NULL)`` of the NOT NULL path before 18."""
    return helper_name("onlineschema_nn", table, column)


def fill_trigger_names(table: str, column: str) -> tuple[str, str]:
    """(function, trigger) that fill a new column for rows written during a migration."""
    return helper_name("onlineschema_fill", table, column), helper_name("onlineschema_fill", column)


def sync_trigger_names(table: str, column: str) -> tuple[str, str]:
    """(function, trigger) that keep a column and its copy in step. BEFORE triggers fire
    in name order: "zz_" runs after the application's own, so a trigger that changes the
    old column is seen by the copy."""
    return (
        helper_name("onlineschema_sync", table, column),
        helper_name("zz_onlineschema_sync", column),
    )


def shadow_name(name: str) -> str:
    """An object built beside ``name`` and swapped in for it at contract."""
    return helper_name(name, "onlineschema_new")


def retired_name(name: str) -> str:
    """An object that ``shadow_name(name)`` replaced, until it is dropped."""
    return helper_name(name, "onlineschema_old")


NAMEDATALEN = 64


def _clip(data: bytes, limit: int) -> bytes:
    """The longest prefix of UTF-8 ``data`` of at most ``limit`` bytes that ends at a
    character boundary (``pg_mbcliplen``)."""
    return data[:limit].decode("utf-8", errors="ignore").encode()


def make_object_name(name1: str, name2: str | None, label: str | None) -> str:
    """``makeObjectName``: ``name1[_name2][_label]`` within 63 bytes, the longer of the
    two names shortened first."""
    b1 = name1.encode()
    b2 = name2.encode() if name2 is not None else None
    overhead = 0
    n1, n2 = len(b1), 0
    if b2 is not None:
        n2 = len(b2)
        overhead += 1
    if label:
        overhead += len(label.encode()) + 1
    avail = NAMEDATALEN - 1 - overhead
    while n1 + n2 > avail:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    out = _clip(b1, n1)
    if b2 is not None:
        out += b"_" + _clip(b2, n2)
    if label:
        out += b"_" + label.encode()
    return out.decode()


def name_addition(names: Iterable[str]) -> str:
    """``ChooseIndexNameAddition`` / ``ChooseForeignKeyConstraintNameAddition``: the
    column names joined with ``_``, cut once past NAMEDATALEN bytes."""
    buf = b""
    for name in names:
        if buf:
            buf += b"_"
        buf += name.encode()[: NAMEDATALEN - 1]
        if len(buf) >= NAMEDATALEN:
            break
    return buf.decode("utf-8", errors="ignore")


# -------------------------------------------------------------- index column names


def _figure_colname(node: Any) -> tuple[str | None, int]:
    """``FigureColnameInternal`` over a raw parse tree: (name, strength)."""
    if isinstance(node, ast.ColumnRef):
        last = (node.fields or ())[-1:]
        if last and isinstance(last[0], ast.String):
            return str(last[0].sval), 2
        return None, 0
    if isinstance(node, ast.A_Indirection):
        fname = None
        for item in node.indirection or ():
            if isinstance(item, ast.String):
                fname = str(item.sval)
        if fname:
            return fname, 2
        return _figure_colname(node.arg)
    if isinstance(node, ast.FuncCall):
        return str(tuple(node.funcname or ("",))[-1].sval), 2
    if isinstance(node, ast.A_Expr):
        if getattr(node.kind, "name", "") == "AEXPR_NULLIF":
            return "nullif", 2
        return None, 0
    if isinstance(node, ast.TypeCast):
        name, strength = _figure_colname(node.arg)
        if strength <= 1 and node.typeName is not None:
            return str(tuple(node.typeName.names or ("",))[-1].sval), 1
        return name, strength
    if isinstance(node, ast.CollateClause):
        return _figure_colname(node.arg)
    if isinstance(node, ast.GroupingFunc):
        return "grouping", 2
    if isinstance(node, ast.CaseExpr):
        name, strength = _figure_colname(node.defresult)
        if strength <= 1:
            return "case", 1
        return name, strength
    if isinstance(node, ast.A_ArrayExpr):
        return "array", 2
    if isinstance(node, ast.RowExpr):
        return "row", 2
    if isinstance(node, ast.CoalesceExpr):
        return "coalesce", 2
    if isinstance(node, ast.MinMaxExpr):
        return ("greatest" if getattr(node.op, "name", "") == "IS_GREATEST" else "least"), 2
    if isinstance(node, ast.SQLValueFunction):
        op = getattr(node.op, "name", "").removeprefix("SVFOP_").removesuffix("_N")
        return op.lower(), 2
    if isinstance(node, ast.SubLink):
        kind = getattr(node.subLinkType, "name", "")
        if kind == "EXISTS_SUBLINK":
            return "exists", 2
        if kind == "ARRAY_SUBLINK":
            return "array", 2
    return None, 0


def index_column_names(
    columns: Sequence[str], elements: Sequence[str], include: Sequence[str] = ()
) -> list[str]:
    """``ChooseIndexColumnNames``: a name per index column (key columns, then
    expression elements as SQL index elements, then INCLUDE columns), made distinct."""
    raw: list[str] = list(columns)
    for element in elements:
        name = None
        try:
            stmt: Any = pglast.parse_sql(f"CREATE INDEX ON t ({element})")[0].stmt
            elem = stmt.indexParams[0]
            name = str(elem.name) if elem.name else _figure_colname(elem.expr)[0]
        except Exception:
            name = None
        raw.append(name or "expr")
    raw.extend(include)
    out: list[str] = []
    for original in raw:
        current = original
        i = 1
        while current in out:
            suffix = str(i).encode()
            current = _clip(original.encode(), NAMEDATALEN - 1 - len(suffix)).decode() + str(i)
            i += 1
        out.append(current)
    return out


# -------------------------------------------------------------------------- choosing


@dataclass
class NamesInUse:
    """Relation and constraint names taken per schema: the catalog's and this plan's
    (a plan extension: ``names_in_use(ctx)``)."""

    relation_taken: Callable[[str, str], bool]
    constraints: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def create(cls, ctx: Any) -> NamesInUse:
        cat = ctx.catalog
        constraints = set(cat.constraint_names)
        for t in ctx.tables.values():
            constraints.update((t.schema, k) for k in t.constraints)

        def taken(schema: str, name: str) -> bool:
            return (schema, name) in ctx.relations or (schema, name) in cat.relation_names

        return cls(taken, constraints)

    def relation(
        self, schema: str, name1: str, name2: str | None, label: str, *, isconstraint: bool
    ) -> str:
        """``ChooseRelationName`` (an index, and with ``isconstraint`` the constraint it
        backs: the name must be free among constraints too)."""
        n = 0
        while True:
            name = make_object_name(name1, name2, label + (str(n) if n else ""))
            if not self.relation_taken(schema, name) and not (
                isconstraint and (schema, name) in self.constraints
            ):
                break
            n += 1
        if isconstraint:
            self.constraints.add((schema, name))
        return name

    def constraint(self, schema: str, name1: str, name2: str | None, label: str) -> str:
        """``ChooseConstraintName`` (foreign keys, checks, NOT NULL constraints)."""
        n = 0
        while True:
            name = make_object_name(name1, name2, label + (str(n) if n else ""))
            if (schema, name) not in self.constraints:
                break
            n += 1
        self.constraints.add((schema, name))
        return name


def names_in_use(ctx: Any) -> NamesInUse:
    """The plan's ``NamesInUse`` (made on first use from its catalog and model)."""
    names = ctx.extension(NamesInUse)
    assert isinstance(names, NamesInUse)
    return names


def name_prefix(table: str) -> str:
    """What every name PostgreSQL derives from ``table`` starts with (``makeObjectName``
    keeps at least this much of the first name)."""
    return _clip(table.encode(), 20).decode()
