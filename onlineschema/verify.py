"""Check a column copy before the contract phase drops the old column.

A type change or a rename copies the column: the expand phase adds a new column kept in
step with the old one by a trigger, the backfill fills the existing rows, and the
contract phase swaps the names and drops the old column. Before that drop, this module
reads every row, in batches (keyset over the primary key, the backfill's throttle, batch
size and duty cycle), and checks that the new column holds the old one converted::

    new::text IS NOT DISTINCT FROM (conversion of old)::text

(as text, as the sync trigger compares, so that types without ``=`` work; NULLs match
NULLs). A row changed behind the trigger's back (``session_replication_role = replica``,
a restore that disabled triggers, a bug) shows up as a mismatch: the contract is refused
(exit 2, nothing dropped) with sample keys and the command that re-copies those rows.

``onlineschema verify NAME`` runs the same check on demand; the executor's setting
``verify_before_contract=False`` turns the check before the contract off.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg import sql

from .backfill import BackfillSettings
from .errors import Refused
from .plan import Plan, Step
from .session import batch_settings
from .sql import batches
from .sql.batches import Spec
from .throttle import Context, Throttle

if TYPE_CHECKING:
    from .executor import Executor

log = structlog.stdlib.get_logger("onlineschema.verify")

#: sample keys shown when rows do not match
SAMPLES = 10


@dataclass(frozen=True)
class Copy:
    """One copied column: ``new`` is filled with ``forward`` (an expression over the row
    that converts the old column)."""

    step_id: str
    schema: str
    table: str
    new: str
    forward: str
    key: tuple[str, ...]
    key_types: tuple[str, ...]

    @property
    def qual(self) -> str:
        return f"{self.schema}.{self.table}"

    def spec(self) -> Spec:
        return Spec(
            schema=self.schema,
            table=self.table,
            set=[[self.new, self.forward]],
            where=None,
            only_null=None,
            key=list(self.key),
            key_types=list(self.key_types),
            strategy="keyset" if self.key else "ctid",
        )


@dataclass
class CopyResult:
    copy: Copy
    rows: int = 0
    mismatches: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Report:
    migration: str
    results: list[CopyResult]

    @property
    def ok(self) -> bool:
        return all(r.mismatches == 0 for r in self.results)


def copies_of(plan: Plan) -> list[Copy]:
    """The column copies of ``plan``: backfill steps that fill a new column added with a
    sync trigger (type changes and renames), not plain backfills."""
    added = {
        s.id: s
        for s in plan.steps
        if s.action == "add_column" and any("onlineschema_sync" in t for t in s.statements)
    }
    out = []
    for s in plan.steps:
        if s.action != "backfill":
            continue
        d = s.details
        sets = d.get("set") or []
        if len(sets) != 1 or d.get("only_null") != sets[0][0] or not s.tables:
            continue
        new, forward = sets[0]
        if f"add_column.{s.tables[0]}.{new}" not in added:
            continue
        out.append(
            Copy(
                step_id=s.id,
                schema=d["schema"],
                table=d["table"],
                new=new,
                forward=forward,
                key=tuple(d.get("key") or ()),
                key_types=tuple(d.get("key_types") or ()),
            )
        )
    return out


def _swapped(plan: Plan, states: dict[str, dict[str, Any]]) -> bool:
    return any(
        s.action == "swap_columns" and states.get(s.id, {}).get("state") == "done"
        for s in plan.steps
    )


def _backfill_pending(plan: Plan, states: dict[str, dict[str, Any]], c: Copy) -> Step | None:
    step = next(s for s in plan.steps if s.id == c.step_id)
    return None if states.get(step.id, {}).get("state") == "done" else step


class Verifier:
    """Runs the check of one migration's copies on ``conn`` (autocommit)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        migration: str,
        settings: BackfillSettings,
        *,
        lock_timeout: float = 0.5,
        sleep: Any = time.sleep,
        throttle: Throttle | None = None,
    ) -> None:
        self.conn = conn
        self.migration = migration
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.sleep = sleep
        self.log = log.bind(migration=migration)
        self.throttle = throttle if throttle is not None else Throttle(logger=self.log)
        self._next_signal = 0.0

    def check(self, c: Copy) -> CopyResult:
        spec = c.spec()
        res = CopyResult(c)
        t0 = time.monotonic()
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT %s::regclass::oid, current_setting('block_size')::int,"
                " pg_relation_size(%s::regclass)",
                (spec.regclass, spec.regclass),
            )
            row = cur.fetchone()
        assert row is not None
        oid, block_size, size = int(row[0]), int(row[1]), int(row[2])
        ctx = Context(self.conn, oid, lambda: [int(self.conn.info.backend_pid)])
        s = self.settings
        n = s.batch_initial
        cursor: list[str] | int | None = None if c.key else 0
        blocks = max(size // block_size, 1)
        self.log.info("verify_started", table=c.qual, column=c.new, conversion=c.forward)
        try:
            while True:
                self._gate(ctx)
                bt = time.monotonic()
                done, cursor, rows = self._batch(c, spec, cursor, n, blocks, res)
                elapsed = time.monotonic() - bt
                res.rows += rows
                if done:
                    break
                ratio = s.batch_target / max(elapsed, 1e-3)
                n = int(min(max(n * min(max(ratio, 0.5), 2.0), s.batch_min), s.batch_max))
                duty = min(max(s.duty_cycle, 0.01), 1.0)
                rest = elapsed * (1 - duty) / duty + s.sleep
                if rest > 0:
                    self.sleep(rest)
        finally:
            self.throttle.close()
        res.seconds = time.monotonic() - t0
        self.log.info(
            "verify_done",
            table=c.qual,
            column=c.new,
            rows=res.rows,
            mismatches=res.mismatches,
            seconds=round(res.seconds, 3),
        )
        return res

    def _gate(self, ctx: Context) -> None:
        while True:
            now = time.monotonic()
            if now >= self._next_signal:
                self._next_signal = now + self.settings.signal_interval
                self.throttle.poll(ctx, self.settings)
            if not self.throttle.engaged:
                return
            self.sleep(min(0.2, max(self.settings.signal_interval, 0.01)))

    def _batch(
        self,
        c: Copy,
        spec: Spec,
        cursor: Any,
        size: int,
        blocks: int,
        res: CopyResult,
    ) -> tuple[bool, Any, int]:
        """Check one batch after ``cursor``; returns (finished, new cursor, rows read)."""
        locals_ = batch_settings(self.lock_timeout, self.settings.batch_statement_timeout)
        bad = sql.SQL("{n}::text IS DISTINCT FROM ({f})::text").format(
            n=sql.Identifier(c.new), f=sql.SQL(c.forward)
        )
        for attempt in range(1, 31):
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute(locals_)
                    if c.key:
                        lower = [batches.key_after(spec, cursor)] if cursor is not None else []
                        cur.execute(batches.keyset_upper(spec, [*lower, sql.SQL("true")], size))
                        up = cur.fetchone()
                        conds = [*lower] + ([batches.key_upto(spec, list(up))] if up else [])
                        label: sql.Composable = sql.SQL("concat_ws(',', {})").format(
                            spec.key_text()
                        )
                        order: sql.Composable = spec.key_row()
                        new_cursor: Any = list(up) if up else None
                    else:
                        width = max(size // 50, 1)  # blocks (about 50 rows each)
                        hi = min(cursor + width, blocks)
                        if cursor + width >= blocks:
                            hi = 2**31 - 1  # the last range takes the rest (blocks added since)
                        conds = [batches.block_range(cursor, hi)]
                        label = sql.SQL("ctid::text")
                        order = sql.SQL("ctid")
                        new_cursor = hi
                    where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
                    cur.execute(
                        sql.SQL(
                            "SELECT count(*), count(*) FILTER (WHERE bad),"
                            " (array_agg(k ORDER BY o) FILTER (WHERE bad))[1:{lim}]"
                            " FROM (SELECT {label} AS k, {bad} AS bad, {order} AS o"
                            " FROM {t} AS {a} WHERE {w}) s"
                        ).format(
                            lim=sql.Literal(SAMPLES),
                            label=label,
                            order=order,
                            bad=bad,
                            t=spec.rel,
                            a=sql.Identifier(c.table),
                            w=where,
                        )
                    )
                    row = cur.fetchone()
                break
            except (pgerr.LockNotAvailable, pgerr.QueryCanceled) as exc:
                if isinstance(exc, pgerr.QueryCanceled):
                    if size <= self.settings.batch_min:
                        raise Refused(
                            f"verifying {c.qual}.{c.new}: a batch of {size} rows still ran"
                            f" past batch_statement_timeout ({self.settings.batch_statement_timeout}s)",
                            "raise it (onlineschema set NAME batch_statement_timeout=30) and"
                            " try again",
                        ) from exc
                    size = max(self.settings.batch_min, size // 4)
                elif attempt == 30:
                    raise
                self.sleep(min(0.2 * attempt, 5.0))
        assert row is not None
        rows, mismatches, samples = int(row[0]), int(row[1]), list(row[2] or [])
        res.mismatches += mismatches
        room = SAMPLES - len(res.samples)
        res.samples.extend(samples[:room])
        if c.key:
            finished = new_cursor is None or rows < size
            return finished, new_cursor, rows
        return new_cursor >= blocks, new_cursor, rows


def verify(ex: Executor, name: str, *, require_backfilled: bool = True) -> Report:
    """Check every column copy of migration ``name`` (see the module doc)."""
    row = ex.store.require(name)
    plan = Plan.from_dict(row["plan"])
    states = ex.store.steps(name)
    found = copies_of(plan)
    if _swapped(plan, states):
        log.info("verify_skipped", migration=name, reason="the columns are already swapped")
        return Report(name, [])
    if require_backfilled:
        for c in found:
            step = _backfill_pending(plan, states, c)
            if step is not None:
                raise Refused(
                    f"migration {name}: the backfill {step.id} has not finished, so"
                    f" {c.qual}.{c.new} is not filled yet",
                    f"finish it first: `onlineschema resume {name}`",
                )
    overrides = (ex.store.control(name) or {}).get("settings") or {}
    try:
        settings = ex.settings.backfill.with_overrides(overrides)
    except ValueError:
        settings = ex.settings.backfill
    v = Verifier(ex.conn, name, settings, lock_timeout=ex.settings.lock_timeout, sleep=ex.sleep)
    return Report(name, [v.check(c) for c in found])


def refusal(report: Report, *, before_contract: bool) -> Refused:
    """The Refused error for a report with mismatches: what differs, where, how to fix."""
    problems, fixes = [], []
    for r in report.results:
        if not r.mismatches:
            continue
        c = r.copy
        keys = ", ".join(r.samples)
        key_name = ",".join(c.key) if c.key else "ctid"
        problems.append(
            f"{r.mismatches} of {r.rows} row(s) of {c.qual} have {c.new} different from"
            f" {c.forward}; e.g. {key_name} = {keys}"
        )
        col = sql.Identifier(c.new).as_string(None)
        table = sql.Identifier(c.schema, c.table).as_string(None)
        where = f"{col}::text IS DISTINCT FROM ({c.forward})::text"
        fixes.append(
            "onlineschema backfill"
            f" --table {shlex.quote(table)}"
            f" --set {shlex.quote(f'{col} = {c.forward}')}"
            f" --where {shlex.quote(where)}"
            f" --name {shlex.quote(f'{report.migration}_fix_{int(time.time())}')}"
        )
    what = "the contract phase was not started: nothing was dropped. " if before_contract else ""
    fix = (
        what
        + "Re-run the backfill for those rows: "
        + "; ".join(f"`{f}`" for f in fixes)
        + f"; then `onlineschema verify {report.migration}`"
        + (f" and `onlineschema contract {report.migration}`" if before_contract else "")
    )
    head = f"migration {report.migration}: the new column does not match the old one"
    return Refused(head + "\n  " + "\n  ".join(problems), fix)


def verify_before_contract(ex: Executor, name: str) -> None:
    """The executor's check before the contract phase (off with
    ``Settings(verify_before_contract=False)``); raises Refused on a mismatch."""
    if not getattr(ex.settings, "verify_before_contract", True):
        return
    row = ex.store.require(name)
    if not copies_of(Plan.from_dict(row["plan"])):
        return
    report = verify(ex, name)
    if not report.ok:
        raise refusal(report, before_contract=True)
