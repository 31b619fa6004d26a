"""A plan: ordered phases of steps, readable before anything runs.

Steps are plain data (SQL already composed with ``psycopg.sql`` and rendered), so a plan
can be stored with its migration, hashed, shown as text or JSON, rendered as a SQL
script, and executed; a dry run and a real run read the same objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

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


class StepKind(StrEnum):
    """How a step runs; the executor and the script renderer dispatch on it
    (``onlineschema.executor.steps.STEP_HANDLERS``), never on ``Step.action``."""

    #: BEGIN; SET LOCAL timeouts; statements; record done; COMMIT
    TRANSACTION = "transaction"
    #: outside a transaction (``DROP INDEX CONCURRENTLY``...): session timeouts, reconciled
    #: by the postcondition
    AUTOCOMMIT = "autocommit"
    #: ``CREATE INDEX CONCURRENTLY`` as a state machine (payload: :class:`IndexBuild`)
    INDEX_BUILD = "index_build"
    #: a batched, resumable UPDATE (payload: :class:`BackfillSpec`)
    BACKFILL = "backfill"
    #: no SQL: a point the migration stops at (Alembic's contract marker)
    MARKER = "marker"


@dataclass(frozen=True)
class IndexBuild:
    """The index a concurrent build creates (``details["index"]`` in stored plans)."""

    schema: str
    name: str
    table: str

    @classmethod
    def from_details(cls, d: Mapping[str, Any]) -> IndexBuild:
        return cls(schema=d["schema"], name=d["name"], table=d.get("table", ""))


@dataclass(frozen=True)
class BackfillSpec:
    """What a backfill step updates, and how it keeps its place (the backfill keys of
    ``details`` in stored plans)."""

    schema: str
    table: str
    set: tuple[tuple[str, str], ...]
    where: str | None = None
    #: only rows where this column is still NULL (idempotent fills)
    only_null: str | None = None
    key: tuple[str, ...] = ()
    key_types: tuple[str, ...] = ()
    strategy: str = "keyset"
    #: the ``onlineschema backfill`` command line that runs it on its own (scripts)
    command: str | None = None

    @classmethod
    def from_details(cls, d: Mapping[str, Any]) -> BackfillSpec:
        return cls(
            schema=d["schema"],
            table=d["table"],
            set=tuple((str(c), str(e)) for c, e in d.get("set", ())),
            where=d.get("where"),
            only_null=d.get("only_null"),
            key=tuple(d.get("key", ())),
            key_types=tuple(d.get("key_types", ())),
            strategy=d.get("strategy", "keyset"),
            command=d.get("command"),
        )


@dataclass(frozen=True)
class LintWaiver:
    """A third-party linter's rule (squawk) waived for one step, with the reason
    (``details["squawk_ignore"]`` in stored plans)."""

    rule: str
    why: str


#: contract steps that only remove the migration's own helpers: abort may find them done
#: and still undo the rest (labels as every release wrote them)
_HELPER_CLEANUP = frozenset({"drop_helper_check", "drop_trigger"})
#: steps whose undo restores what the live catalog said (a previous default): an offline
#: script, which has no catalog, cannot render it
_UNDO_NEEDS_CATALOG = frozenset({"set_default", "drop_default"})


def step_kind(
    transactional: bool, details: Mapping[str, Any], statements: Sequence[str]
) -> StepKind:
    """The kind of a step as every release stored it: derived from its payload and its
    transaction flag (plans store no kind)."""
    if "index" in details:
        return StepKind.INDEX_BUILD
    if "strategy" in details and "set" in details:
        return StepKind.BACKFILL
    if not statements:
        return StepKind.MARKER
    return StepKind.TRANSACTION if transactional else StepKind.AUTOCOMMIT


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
    #: how the step runs; derived from the payload and ``transactional`` when not given
    #: (stored plans carry no kind: see :func:`step_kind`)
    kind: StepKind = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.kind is None:
            derived = step_kind(self.transactional, self.details, self.statements)
            object.__setattr__(self, "kind", derived)
        elif not isinstance(self.kind, StepKind):
            object.__setattr__(self, "kind", StepKind(self.kind))

    @property
    def index_build(self) -> IndexBuild | None:
        """The index an INDEX_BUILD step creates."""
        d = self.details.get("index")
        return IndexBuild.from_details(d) if d else None

    @property
    def waits_for_snapshots(self) -> bool:
        """The step waits, as ``CREATE INDEX CONCURRENTLY`` does, for every transaction
        of the database holding an older snapshot (an index build, a ``REINDEX
        CONCURRENTLY``: ``details["waits_for_snapshots"]``). Those waits block no one, so
        it runs under ``index_lock_timeout``, and the lock guard waits old snapshots out
        before it starts rather than leave the step half done behind them."""
        return self.kind is StepKind.INDEX_BUILD or bool(self.details.get("waits_for_snapshots"))

    @property
    def lock_waits_block_no_one(self) -> bool:
        """Its lock waits block no one (a step that waits for old snapshots, an abort's
        undo that runs outside a transaction: ``details["index_lock_timeout"]``), so it
        runs under ``index_lock_timeout`` instead of the application's lock_timeout."""
        return self.waits_for_snapshots or bool(self.details.get("index_lock_timeout"))

    @property
    def backfill_spec(self) -> BackfillSpec | None:
        """What a BACKFILL step updates."""
        return BackfillSpec.from_details(self.details) if self.kind is StepKind.BACKFILL else None

    @property
    def lint(self) -> tuple[LintWaiver, ...]:
        """Linter rules waived for this step's statements."""
        return tuple(
            LintWaiver(w["rule"], w["why"]) for w in self.details.get("squawk_ignore", ())
        )

    @property
    def cleans_up_helpers(self) -> bool:
        """A contract step that only removes the migration's own helpers."""
        return self.action in _HELPER_CLEANUP

    @property
    def undo_offline_ok(self) -> bool:
        """Can an offline script render this step's undo (no live catalog needed)?"""
        return self.action not in _UNDO_NEEDS_CATALOG

    @property
    def lock_text(self) -> str:
        return LOCK_TEXT.get(self.lock, self.lock)

    @property
    def blocks_application(self) -> bool:
        return blocks_application(self.lock)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (unchanged since 0.1: the kind is derived again on reading)."""
        d = dataclasses.asdict(self)
        del d["kind"]
        d["undo"] = [dataclasses.asdict(a) for a in self.undo]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        """Read a stored step, of this release or an earlier one."""
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
