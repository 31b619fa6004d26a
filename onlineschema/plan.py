"""A plan: ordered phases of steps, readable before anything runs.

Steps are plain data (SQL already composed with ``psycopg.sql`` and rendered), so a plan
can be stored with its migration, hashed, shown as text or JSON, rendered as a SQL
script, and executed; a dry run and a real run read the same objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pglast import keywords
from psycopg import sql

PHASES = ("expand", "backfill", "validate", "contract")
Phase = Literal["expand", "backfill", "validate", "contract"]

PHASE_TEXT = {
    "expand": "add the new shape (brief locks, no scans)",
    "backfill": "fill existing rows in small batches",
    "validate": "build indexes concurrently and validate constraints (reads and writes go on)",
    "contract": "remove what the old shape or the migration itself no longer needs",
}

#: lock modes, weakest first, as PostgreSQL names them in pg_locks
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)

LOCK_TEXT = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
    "": "none",
}

# Which held modes conflict with a requested mode (PostgreSQL docs, table 13.2).
_CONFLICTS: dict[str, frozenset[str]] = {
    "AccessShareLock": frozenset({"AccessExclusiveLock"}),
    "RowShareLock": frozenset({"ExclusiveLock", "AccessExclusiveLock"}),
    "RowExclusiveLock": frozenset(
        {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
    ),
    "ShareUpdateExclusiveLock": frozenset(
        {
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        }
    ),
    "ShareLock": frozenset(
        {
            "RowExclusiveLock",
            "ShareUpdateExclusiveLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        }
    ),
    "ShareRowExclusiveLock": frozenset(set(LOCK_MODES[2:])),
    "ExclusiveLock": frozenset(set(LOCK_MODES[1:])),
    "AccessExclusiveLock": frozenset(LOCK_MODES),
}


def conflicting_modes(mode: str) -> frozenset[str]:
    """The lock modes that conflict with ``mode`` (empty for no lock)."""
    return _CONFLICTS.get(mode, frozenset())


#: modes that stop ordinary reads or writes while held (or queued for)
APPLICATION_BLOCKING = frozenset(
    {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
)


def blocks_application(mode: str) -> bool:
    """Does holding ``mode`` stop ordinary reads or writes (SELECT/INSERT/UPDATE/DELETE)?"""
    return mode in APPLICATION_BLOCKING


@dataclass(frozen=True)
class Action:
    """One statement run by a step or by its undo."""

    sql: str
    transactional: bool = True
    #: reads the table (a VALIDATE): runs under SHARE UPDATE EXCLUSIVE, no statement_timeout
    scans: bool = False


@dataclass(frozen=True)
class Step:
    """One unit of work, executed and recorded as a whole.

    ``id`` is deterministic (same request and catalog, same ids): it keys the step's
    state, so a resumed migration finds its place. ``postcondition`` is a query
    returning one boolean that is true once the step's effect is in the catalog; a step
    whose postcondition already holds is recorded as done without running again.
    """

    id: str
    phase: Phase
    action: str
    description: str
    statements: tuple[str, ...] = ()
    transactional: bool = True
    lock: str = ""  # strongest lock mode taken, as in pg_locks ("AccessExclusiveLock")
    tables: tuple[str, ...] = ()  # qualified names of the tables locked
    scans: bool = False
    rewrites: bool = False
    postcondition: str | None = None
    undo: tuple[Action, ...] = ()
    #: kind-specific data: index build state machine, backfill spec
    details: dict[str, Any] = field(default_factory=dict)
    raw: bool = False
    breaking: bool = False
    #: statement_timeout for the step's statements in seconds; None = the executor's
    #: default for brief DDL, 0 = no limit (scans that run under a weak lock)
    statement_timeout: float | None = None

    @property
    def lock_text(self) -> str:
        return LOCK_TEXT.get(self.lock, self.lock)

    @property
    def blocks_application(self) -> bool:
        return blocks_application(self.lock)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["undo"] = [dataclasses.asdict(a) for a in self.undo]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        d = dict(d)
        d["statements"] = tuple(d.get("statements", ()))
        d["tables"] = tuple(d.get("tables", ()))
        d["undo"] = tuple(Action(**a) for a in d.get("undo", ()))
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """The ordered steps for a set of changes on one server version."""

    steps: tuple[Step, ...]
    server_version: int
    changes: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def phase(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.phase == name]

    @property
    def has_contract(self) -> bool:
        return any(s.phase == "contract" and s.breaking for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_version": self.server_version,
            "changes": list(self.changes),
            "notes": list(self.notes),
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            steps=tuple(Step.from_dict(s) for s in d["steps"]),
            server_version=d["server_version"],
            changes=tuple(d.get("changes", ())),
            notes=tuple(d.get("notes", ())),
        )

    @property
    def hash(self) -> str:
        body = json.dumps([s.to_dict() for s in self.steps], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def render_text(self) -> str:
        """The plan as a person reads it: phases, then each step with its lock and cost."""
        lines = [f"Plan for PostgreSQL {self.server_version // 10000} ({len(self.steps)} steps)"]
        for note in self.notes:
            lines.append(f"  note: {note}")
        n = 0
        for phase in PHASES:
            steps = self.phase(phase)
            if not steps:
                continue
            lines.append("")
            lines.append(f"{phase.upper()}: {PHASE_TEXT[phase]}")
            for s in steps:
                n += 1
                flags = []
                if s.scans:
                    flags.append("scans")
                if s.rewrites:
                    flags.append("REWRITES")
                if not s.transactional:
                    flags.append("no transaction")
                if s.raw:
                    flags.append("RAW: not made safe")
                if s.breaking:
                    flags.append("breaks running code")
                lock = s.lock_text
                if s.tables:
                    lock += " on " + ", ".join(s.tables)
                if s.blocks_application:
                    lock += " (brief, under lock_timeout)" if not s.scans else ""
                lines.append(f"  {n:>2}. {s.description}")
                lines.append(f"      id: {s.id}")
                lines.append(f"      lock: {lock}" + (f"; {', '.join(flags)}" if flags else ""))
                for stmt in s.statements:
                    for i, line in enumerate(stmt.splitlines()):
                        lines.append(("      > " if i == 0 else "        ") + line)
        return "\n".join(lines)


def render_sql_script(
    steps: Sequence[Step],
    *,
    lock_timeout: str,
    statement_timeout: str,
    index_lock_timeout: str | None = None,
    backfill_command: str = "onlineschema backfill",
) -> str:
    """The plan as a script a DBA can run with psql.

    Each transactional step is its own ``BEGIN``/``COMMIT`` with ``SET LOCAL`` timeouts;
    ``CONCURRENTLY`` steps run outside a transaction with session timeouts set before and
    reset after (an index build under ``index_lock_timeout``, as the executor runs it:
    its waits do not block the application; default: ``lock_timeout``). A batched
    backfill cannot be a single statement: it is rendered as the command that runs it,
    commented out so the script never silently skips it.
    """
    from .executor.session import Policy, timeouts_for

    policy = Policy(lock_timeout, statement_timeout, index_lock_timeout or lock_timeout)
    out = [
        "-- Generated by onlineschema: the plan as a SQL script.",
        "-- Every step that can block the application runs under a short lock_timeout",
        f"-- ({lock_timeout}); if a step fails with 'canceling statement due to lock timeout',",
        "-- run it again.",
        "",
    ]
    for s in steps:
        out.append(f"-- step {s.id} [{s.phase}]: {s.description}")
        lock = s.lock_text + (" on " + ", ".join(s.tables) if s.tables else "")
        scan = ", scans" if s.scans else ""
        out.append(f"-- lock: {lock}{scan}")
        # squawk reads an ignore comment only on the line right above the statement, and
        # only one: several rules go on that one line, comma-separated
        rules = [sup["rule"] for sup in s.details.get("squawk_ignore", ())]
        ignores = [f"-- squawk-ignore {', '.join(rules)}"] if rules else []
        for sup in s.details.get("squawk_ignore", ()):
            out.append(f"-- (squawk {sup['rule']} ignored: {sup['why']})")
        if s.action == "backfill":
            s = with_backfill_command(s)
            out.append("-- This step updates existing rows in batches; run it with:")
            out.append(f"--   {s.details.get('command', backfill_command)}")
            out.append("")
            continue
        t = timeouts_for(s, policy, index_build=s.action == "create_index")
        if t.local:
            out.append("BEGIN;")
            out.append(f"SET LOCAL lock_timeout = '{t.lock_timeout}';")
            out.append(f"SET LOCAL statement_timeout = '{t.statement_timeout}';")
            out.extend(_terminated(s.statements, ignores))
            out.append("COMMIT;")
        else:
            out.append(f"SET lock_timeout = '{t.lock_timeout}';")
            out.append(f"SET statement_timeout = '{t.statement_timeout}';")
            out.extend(_terminated(s.statements, ignores))
            out.append("RESET lock_timeout;")
            out.append("RESET statement_timeout;")
        out.append("")
    return "\n".join(out)


def with_backfill_command(step: Step) -> Step:
    """Give a backfill step the ``onlineschema backfill`` command line that does its work
    on its own, for the SQL script rendering."""
    d = step.details
    if step.action != "backfill" or "command" in d or "table" not in d:
        return step
    table = f"{_ident(d['schema'])}.{_ident(d['table'])}"
    parts = ["onlineschema", "backfill", "--table", table]
    for column, expr in d.get("set", ()):
        parts += ["--set", f"{_ident(column)} = {expr}"]
    conds = []
    if d.get("only_null"):
        conds.append(f"{_ident(d['only_null'])} IS NULL")
    if d.get("where"):
        conds.append(f"({d['where']})" if d.get("only_null") else d["where"])
    if conds:
        parts += ["--where", " AND ".join(conds)]
    command = " ".join(shlex.quote(p) for p in parts)
    return dataclasses.replace(step, details={**d, "command": command})


def _ident(name: str) -> str:
    """An identifier as a person would write it: bare when that reads back the same."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in (
        keywords.RESERVED_KEYWORDS | keywords.COL_NAME_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS
    ):
        return name
    return sql.Identifier(name).as_string(None)


def _terminated(stmts: Sequence[str], before: Sequence[str] = ()) -> list[str]:
    out: list[str] = []
    for s in stmts:
        out.extend(before)
        out.append(s if s.rstrip().endswith(";") else s + ";")
    return out
