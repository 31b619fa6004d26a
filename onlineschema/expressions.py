"""Validation of user-supplied SQL fragments.

Defaults, backfill values, ``WHERE`` and ``CHECK`` conditions, index elements and type
names reach onlineschema as SQL text and end up inside statements that it builds. Each
fragment is parsed with PostgreSQL's own parser (pglast) *inside a fixed wrapper*
(``SELECT (<text>)``, ``CREATE INDEX x ON t (<text>)``, ``SELECT NULL::<text>``) and must
produce exactly the shape that wrapper allows: a fragment that closes the wrapper early,
adds a clause (``FROM``, ``WHERE``, a second target...) or carries a ``;`` is refused, so
a fragment can never smuggle in a statement. The text returned is the fragment as
pglast's deparser prints it, so equivalent input gives the same text (``a>1`` and
``a > 1`` both become ``a > 1``).

Example::

    >>> check_expression("CASE WHEN amount>100 THEN 'big' ELSE 'small' END")
    "CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"
    >>> check_expression("1); DROP TABLE users; --")
    Traceback (most recent call last):
    ...
    onlineschema.errors.Refused: the expression '1); DROP TABLE users; --' is not a ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pglast
from pglast import ast
from pglast.enums import A_Expr_Kind, SetOperation
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

from onlineschema.errors import Refused

__all__ = [
    "check_expression",
    "check_index_element",
    "check_type",
    "column_refs",
    "deparse",
    "function_names",
    "is_constant",
    "walk",
]

#: Statements that change data; never allowed inside an expression (a sub-query).
_DML_NODES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)

#: ``SelectStmt`` attributes that must be empty for ``SELECT <one target>``.
_SELECT_EXTRAS = (
    "distinctClause",
    "intoClause",
    "fromClause",
    "whereClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "valuesLists",
    "sortClause",
    "limitOffset",
    "limitCount",
    "lockingClause",
    "withClause",
    "larg",
    "rarg",
)

#: ``IndexStmt`` attributes that must be empty for ``CREATE INDEX x ON t (<one element>)``.
_INDEX_EXTRAS = (
    "indexIncludingParams",
    "whereClause",
    "options",
    "tableSpace",
    "excludeOpNames",
    "idxcomment",
)


def deparse(node: Any) -> str:
    """SQL text of a parse-tree node, as pglast's deparser prints it."""
    return str(RawStream()(node))


def walk(node: Any) -> Iterator[Any]:
    """Every parse-tree node in ``node`` (itself included), depth first."""
    if isinstance(node, ast.Node):
        yield node
        slots: Any = getattr(type(node), "__slots__", ())
        for attr in slots:
            yield from walk(getattr(node, attr, None))
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from walk(item)


def _shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Fragment:
    """What kind of fragment is being checked, for the error message."""

    def __init__(self, kind: str, what: str, text: str, example: str) -> None:
        self.kind = kind
        self.what = what
        self.text = text
        self.example = example

    def refuse(self, detail: str) -> Refused:
        return Refused(
            problem=f"the {self.what} {_shorten(self.text)!r} is not a single SQL "
            f"{self.kind}: {detail}",
            fix=f"give exactly one {self.kind}, such as {self.example}, "
            "with no ';' and no statement",
        )


def _parse(sql: str, frag: _Fragment) -> Any:
    """Parse ``sql`` (the fragment wrapped): its one statement, or Refused."""
    if "\x00" in frag.text:
        raise frag.refuse("it contains a NUL character")
    try:
        tokens = scan(frag.text)
    except ParseError as exc:
        raise frag.refuse(str(exc.args[0])) from None
    if any(tok.name == "ASCII_59" for tok in tokens):
        raise frag.refuse("it contains ';', which ends a statement")
    try:
        stmts = pglast.parse_sql(sql)
    except ParseError as exc:
        raise frag.refuse(str(exc.args[0])) from None
    if len(stmts) != 1:
        raise frag.refuse(f"it makes {len(stmts)} statements")
    return stmts[0].stmt


def _check_no_dml(node: Any, frag: _Fragment) -> None:
    for sub in walk(node):
        if isinstance(sub, _DML_NODES):
            raise frag.refuse("it contains a data-changing statement")
        if isinstance(sub, ast.SelectStmt) and sub.intoClause is not None:
            raise frag.refuse("it contains SELECT ... INTO")


def _single_select_target(stmt: Any, frag: _Fragment) -> Any:
    """The one target value of ``SELECT <target>``, or Refused."""
    if not isinstance(stmt, ast.SelectStmt):
        raise frag.refuse(f"it is not {'a' if frag.kind == 'type name' else 'an'} {frag.kind}")
    if stmt.op != SetOperation.SETOP_NONE:
        raise frag.refuse("it adds a UNION/INTERSECT/EXCEPT")
    for attr in _SELECT_EXTRAS:
        if getattr(stmt, attr, None):
            raise frag.refuse(f"it adds a clause ({attr})")
    targets = stmt.targetList or ()
    if len(targets) != 1:
        raise frag.refuse(f"it makes {len(targets)} values, not one")
    target = targets[0]
    if not isinstance(target, ast.ResTarget) or target.name or target.indirection:
        raise frag.refuse("it adds an alias")
    if target.val is None:
        raise frag.refuse("it is empty")
    return target.val


def _expression_node(text: str, what: str) -> Any:
    frag = _Fragment("expression", what, text, "now() or amount > 100")
    # The newline keeps a trailing "-- comment" in ``text`` from eating the ")".
    stmt = _parse(f"SELECT (\n{text}\n)", frag)
    node = _single_select_target(stmt, frag)
    if isinstance(node, ast.ColumnRef) and any(
        isinstance(f, ast.A_Star) for f in node.fields or ()
    ):
        raise frag.refuse("'*' is not a value")
    _check_no_dml(node, frag)
    return node


def check_expression(text: str, what: str = "expression") -> str:
    """Check that ``text`` is one SQL expression and return it normalized.

    Raises :class:`Refused` naming ``what`` (``"default of orders.status"``) otherwise.
    Sub-queries are allowed (they are expressions) unless they change data.
    """
    return deparse(_expression_node(text, what))


def check_index_element(text: str, what: str = "index element") -> str:
    """Check that ``text`` is one index element (``lower(email)``, ``created_at DESC``,
    ``"status" varchar_pattern_ops``) and return it deparsed."""
    frag = _Fragment("index element", what, text, "lower(email) or created_at DESC")
    stmt = _parse(f"CREATE INDEX x ON t (\n{text}\n)", frag)
    if not isinstance(stmt, ast.IndexStmt):
        raise frag.refuse("it is not an index element")
    rel = stmt.relation
    if (
        stmt.idxname != "x"
        or rel is None
        or rel.relname != "t"
        or rel.schemaname is not None
        or stmt.accessMethod not in (None, "btree")
    ):
        raise frag.refuse("it changes the statement around it")
    for attr in _INDEX_EXTRAS:
        if getattr(stmt, attr, None):
            raise frag.refuse(f"it adds a clause ({attr})")
    params = stmt.indexParams or ()
    if len(params) != 1 or not isinstance(params[0], ast.IndexElem):
        raise frag.refuse(f"it makes {len(params)} index elements, not one")
    _check_no_dml(params[0], frag)
    return deparse(params[0])


def check_type(text: str, what: str = "type") -> str:
    """Check that ``text`` is one type name (``varchar(20)``, ``numeric(10,2)``,
    ``timestamp with time zone``, ``"MyEnum"``, ``int[]``) and return it deparsed."""
    frag = _Fragment("type name", what, text, "text, varchar(20) or timestamp with time zone")
    stmt = _parse(f"SELECT NULL::{text}\n", frag)
    node = _single_select_target(stmt, frag)
    if (
        not isinstance(node, ast.TypeCast)
        or not isinstance(node.arg, ast.A_Const)
        or not node.arg.isnull
        or node.typeName is None
        or node.typeName.setof
        or node.typeName.pct_type
    ):
        raise frag.refuse("it is not just a type name")
    return deparse(node.typeName)


def has_subquery(expr: str) -> bool:
    """Does ``expr`` contain a sub-query? PostgreSQL refuses them in defaults, CHECK
    constraints and index expressions."""
    return any(isinstance(n, ast.SubLink) for n in walk(_expression_node(expr, "expression")))


def index_element_expression(element: str) -> str | None:
    """The expression of an index element (``lower(email)`` of ``(lower(email)) DESC``),
    or None when the element is a plain column."""
    stmt = pglast.parse_sql(f"CREATE INDEX x ON t (\n{element}\n)")[0].stmt
    assert isinstance(stmt, ast.IndexStmt) and stmt.indexParams
    elem = stmt.indexParams[0]
    assert isinstance(elem, ast.IndexElem)
    return deparse(elem.expr) if elem.expr is not None else None


def function_names(expr: str) -> set[str]:
    """Lower-cased, unqualified names of the functions called in ``expr``.

    SQL value functions (``CURRENT_TIMESTAMP``, ``CURRENT_USER``...) are not function
    calls in the parse tree and are not reported.
    """
    names: set[str] = set()
    for node in walk(_expression_node(expr, "expression")):
        if isinstance(node, ast.FuncCall) and node.funcname:
            last = node.funcname[-1]
            if isinstance(last, ast.String):
                names.add(str(last.sval).lower())
    return names


def column_refs(expr: str) -> set[str]:
    """Names of the columns ``expr`` references (the last part of each column reference)."""
    cols: set[str] = set()
    for node in walk(_expression_node(expr, "expression")):
        if isinstance(node, ast.ColumnRef) and node.fields:
            last = node.fields[-1]
            if isinstance(last, ast.String):
                cols.add(str(last.sval))
    return cols


def _is_unary_sign(node: Any) -> bool:
    """``-x`` or ``+x``."""
    if not isinstance(node, ast.A_Expr) or node.kind != A_Expr_Kind.AEXPR_OP:
        return False
    name: Any = node.name or ()
    return (
        node.lexpr is None
        and len(name) == 1
        and isinstance(name[0], ast.String)
        and name[0].sval in ("-", "+")
    )


def _constant_node(node: Any) -> bool:
    if isinstance(node, ast.A_Const):
        return True
    if isinstance(node, ast.TypeCast):
        return _constant_node(node.arg)
    if _is_unary_sign(node):
        operand = node.rexpr
        while isinstance(operand, ast.TypeCast):
            operand = operand.arg
        return isinstance(operand, ast.A_Const) and isinstance(
            operand.val, (ast.Integer, ast.Float)
        )
    return False


def is_constant(expr: str) -> bool:
    """True if ``expr`` is a literal constant: ``'new'``, ``0``, ``-1.5``, ``NULL``,
    ``true``, ``'{}'::int[]``, ``interval '1 day'``."""
    return _constant_node(_expression_node(expr, "expression"))
