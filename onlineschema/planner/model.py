"""The planner's model of the schema while it plans: the catalog as read, updated by
each change in turn (Django's ``state_forwards``), so a later change is checked against
what the earlier ones leave behind.

Public: recipes read and update it (``ctx.tables``, ``ctx.table(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import TableInfo


@dataclass
class VColumn:
    type: str
    notnull: bool
    default: str | None
    identity: str = ""
    generated: str = ""
    #: added by this migration (does not exist yet for the probes)
    new: bool = False


@dataclass
class VConstraint:
    type: str
    validated: bool
    columns: tuple[str, ...] = ()
    ref: tuple[str, str] | None = None
    index: str | None = None


@dataclass
class VIndex:
    unique: bool
    columns: tuple[str | None, ...]
    valid: bool = True
    partial: bool = False
    constraint: str | None = None


@dataclass
class VTable:
    schema: str
    name: str
    columns: dict[str, VColumn]
    indexes: dict[str, VIndex]
    constraints: dict[str, VConstraint]
    primary_key: tuple[str, ...]
    referenced_by: tuple[tuple[str, str, str], ...]
    new: bool = False  # created by this migration: empty, nothing uses it yet
    info: TableInfo | None = None

    @property
    def qual(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_info(cls, t: TableInfo) -> VTable:
        return cls(
            schema=t.schema,
            name=t.name,
            columns={
                c.name: VColumn(c.type, c.notnull, c.default, c.identity, c.generated)
                for c in t.columns.values()
            },
            indexes={
                i.name: VIndex(i.unique, i.columns, i.valid, i.partial, i.constraint)
                for i in t.indexes.values()
            },
            constraints={
                c.name: VConstraint(c.type, c.validated, c.columns, c.ref_table, c.index)
                for c in t.constraints.values()
            },
            primary_key=t.primary_key,
            referenced_by=t.referenced_by,
            info=t,
        )
