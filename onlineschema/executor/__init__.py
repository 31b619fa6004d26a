"""The executor: runs a plan step by step, records each step with its work, resumes.

One autocommit connection does everything. A transactional step runs inside
``conn.transaction()`` with ``SET LOCAL lock_timeout`` and ``statement_timeout`` and
records itself as done in the same transaction. A ``CONCURRENTLY`` step runs outside a
transaction and is reconciled by its postcondition (an index counts as built only when
``pg_index.indisvalid``). An advisory lock keeps a second executor off the same migration.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg.rows import dict_row

from ..backfill import BackfillRunner, BackfillSettings, NotJoinable
from ..backfill import Observer as BackfillObserver
from ..catalog import read_catalog
from ..changes import Backfill, Change, change_from_dict, changes_to_json
from ..connection import ConnectLike, connection
from ..errors import (
    AlreadyRunning,
    LockBudgetExhausted,
    OnlineSchemaError,
    Paused,
    PreflightError,
    Refused,
    StepFailed,
)
from ..locks import RetryPolicy, guarded
from ..plan import Plan, Step
from ..planner import PlanResult, build_plan, catalog_request
from ..sql import ddl
from ..state import StateStore

log = structlog.stdlib.get_logger("onlineschema.executor")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """``"500ms"``, ``"2s"``, ``"1min"``, ``1.5`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 2s, 1min)")
    value, unit = float(m.group(1)), (m.group(2) or "s")
    return value * {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[unit]


@dataclass(frozen=True)
class Settings:
    """How the executor behaves. Defaults are for a busy production table."""

    #: how long any step may wait for a lock that blocks the application
    lock_timeout: float = 0.5
    #: statement_timeout for brief DDL steps (catalog-only changes)
    statement_timeout: float = 10.0
    #: lock_timeout for CREATE INDEX CONCURRENTLY's waits (they do not block the application)
    index_lock_timeout: float = 60.0
    #: sessions holding a conflicting lock for longer than this are waited out before
    #: queueing (None: the lock_timeout)
    long_transaction: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    backfill: BackfillSettings = field(default_factory=BackfillSettings)
    state_schema: str = "onlineschema"


class Observer(BackfillObserver, Protocol):
    """What the CLI's progress display hooks into (every method optional in practice)."""

    def step_started(self, step: Step, index: int, total: int) -> None: ...
    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None: ...


@dataclass
class Result:
    name: str
    state: str
    steps_run: int
    steps_skipped: int
    seconds: float
    plan: Plan


def changes_hash(changes: Sequence[Change]) -> str:
    return hashlib.sha256(changes_to_json(changes).encode()).hexdigest()[:16]


class Executor:
    """Plans and runs migrations against one database.

    ``target`` is a DSN, a psycopg connection, or a SQLAlchemy Engine/Connection.

    >>> from onlineschema import Executor, AddColumn          # doctest: +SKIP
    >>> with Executor("postgresql://localhost/app") as ex:    # doctest: +SKIP
    ...     ex.apply([AddColumn("orders", "note", "text")], name="orders_note")
    """

    def __init__(
        self,
        target: ConnectLike,
        settings: Settings | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.sleep = sleep
        self.observer = observer
        self._workers = 1  # backfill workers of the current apply/resume
        #: True when the last resume joined another process's backfill as a guest
        self.joining = False
        self._cm = connection(target)
        self.conn: psycopg.Connection[Any] = self._cm.__enter__()
        self.store = StateStore(self.conn, self.settings.state_schema)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- planning -------------------------------------------------------------------

    def plan(self, changes: Sequence[Change]) -> Plan:
        """Read the catalog, plan, and check every expression compiles. Runs no DDL."""
        return self._plan(changes).plan

    def _plan(self, changes: Sequence[Change]) -> PlanResult:
        req = catalog_request(changes)
        catalog = read_catalog(
            self.conn,
            req["tables"],
            index_names=req["index_names"],
            functions=req["functions"],
            types=req["types"],
        )
        if catalog.major < 15:
            raise Refused(
                f"PostgreSQL {catalog.major} is not supported",
                "onlineschema supports PostgreSQL 15 and newer",
            )
        result = build_plan(catalog, changes)
        self._run_probes(result)
        return result

    def _run_probes(self, result: PlanResult) -> None:
        problems: list[Refused] = []
        for probe in result.probes:
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(
                        "SELECT set_config('lock_timeout', %s, true)",
                        (f"{int(self.settings.lock_timeout * 1000)}ms",),
                    )
                    cur.execute(probe.sql)
            except psycopg.errors.LockNotAvailable:
                continue  # could not look now; the step itself will find out
            except psycopg.Error as exc:
                detail = (exc.diag.message_primary or str(exc)).strip()
                problems.append(Refused(f"{probe.problem}: {detail}", probe.fix))
        if problems:
            raise PreflightError(problems)

    # --- lifecycle ------------------------------------------------------------------

    def apply(
        self, changes: Sequence[Change], name: str | None = None, *, workers: int | None = None
    ) -> Result:
        """Plan and run ``changes`` as migration ``name``; with the same name and the same
        changes again, resume it; with other changes under that name, refuse.
        ``workers``: parallel backfill workers (see :meth:`resume` for joining)."""
        changes = list(changes)
        digest = changes_hash(changes)
        name = name or f"migration_{digest[:10]}"
        existing = self.store.get(name)
        if existing is not None:
            if existing["changes_hash"] != digest:
                unfinished = existing["state"] not in ("completed", "aborted")
                raise Refused(
                    f"migration {name!r} already exists with different changes"
                    f" (it is {existing['state']})",
                    "use another --name"
                    + (f", or `onlineschema abort {name}` first" if unfinished else ""),
                )
            if existing["state"] in ("completed", "awaiting_contract"):
                log.info("migration_already_applied", migration=name, state=existing["state"])
                return Result(name, existing["state"], 0, 0, 0.0, Plan.from_dict(existing["plan"]))
            if existing["state"] == "aborted":
                raise Refused(
                    f"migration {name!r} was aborted",
                    "apply it again under a new --name",
                )
            return self.resume(name, workers=workers)
        result = self._plan(changes)  # refuses bad input before any write
        self.store.ensure()
        self._lock(name)
        try:
            if self.store.get(name) is not None:  # created meanwhile by another process
                raise AlreadyRunning(f"migration {name!r} was just started by another process")
            plan = result.plan
            self.store.create(
                name,
                changes=[c.to_dict() for c in changes],
                changes_hash=digest,
                plan=plan.to_dict(),
                plan_hash=plan.hash,
                server_version=plan.server_version,
                step_ids=[(s.id, s.phase) for s in plan.steps],
            )
            log.info("migration_started", migration=name, steps=len(plan), plan_hash=plan.hash)
            self._workers = workers or 1
            return self._run(name, plan)
        finally:
            self.store.unlock(name)

    def resume(self, name: str, *, workers: int | None = None) -> Result:
        """Carry on from the first unfinished step (after a crash, a pause or exit 3).

        ``workers``: parallel backfill workers. When another process runs the migration
        and is in a backfill, ``workers`` makes this process join it: it works on the
        backfill's chunks and returns when none is left to claim (without ``workers`` it
        is refused with AlreadyRunning)."""
        self.store.require(name)
        self.joining = False
        try:
            self._lock(name)
        except AlreadyRunning:
            if workers is None:
                raise
            return self._join(name, workers)
        try:
            row = self.store.require(name)
            if row["state"] in ("completed", "aborted"):
                log.info("migration_nothing_to_resume", migration=name, state=row["state"])
                return Result(name, row["state"], 0, 0, 0.0, Plan.from_dict(row["plan"]))
            if row["state"] == "awaiting_contract":
                raise Refused(
                    f"migration {name!r} is waiting for its contract phase",
                    f"run `onlineschema contract {name}` once the application no longer uses the old shape",
                )
            self.store.set_paused(name, False)
            self.store.set_state(name, "running")
            self._workers = workers or 1
            return self._run(name, Plan.from_dict(row["plan"]))
        finally:
            self.store.unlock(name)

    def contract(self, name: str) -> Result:
        """Run the contract phase of a migration waiting for it."""
        self.store.require(name)
        self._lock(name)
        try:
            row = self.store.require(name)
            if row["state"] not in ("awaiting_contract", "running", "paused", "failed"):
                raise Refused(
                    f"migration {name!r} is {row['state']}; there is no contract phase to run",
                    "run `onlineschema status` to see its state",
                )
            self.store.set_state(name, "running")
            return self._run(name, Plan.from_dict(row["plan"]), contract=True)
        finally:
            self.store.unlock(name)

    def pause(self, name: str) -> None:
        """Ask the process running ``name`` to stop at the next safe point (exit 3)."""
        self.store.require(name)
        self.store.set_paused(name, True)
        log.info("migration_pause_requested", migration=name)

    def set(self, name: str, settings: dict[str, Any]) -> None:
        """Change backfill settings of a running migration (picked up within seconds)."""
        self.store.require(name)
        bad = sorted(set(settings) - set(BackfillSettings.__dataclass_fields__))
        if bad:
            raise Refused(
                f"unknown setting(s): {', '.join(bad)}",
                "known: " + ", ".join(sorted(BackfillSettings.__dataclass_fields__)),
            )
        try:
            BackfillSettings().with_overrides(settings)
        except ValueError as exc:
            raise Refused(f"bad setting value: {exc}") from None
        self.store.update_settings(name, settings)

    def abort(self, name: str) -> Result:
        """Undo what the migration created (expand and validate phases), newest first."""
        self.store.require(name)
        self._lock(name)
        t0 = time.monotonic()
        try:
            row = self.store.require(name)
            if row["state"] in ("completed", "aborted"):
                raise Refused(
                    f"migration {name!r} is already {row['state']}; abort undoes only an"
                    " unfinished migration",
                    "write a new migration that reverses it",
                )
            plan = Plan.from_dict(row["plan"])
            states = self.store.steps(name)
            contract_done = [
                s.id
                for s in plan.steps
                if s.phase == "contract"
                and states[s.id]["state"] == "done"
                and not s.undo
                and s.action not in ("drop_helper_check", "drop_trigger")
            ]
            if contract_done:
                raise Refused(
                    f"migration {name!r} has already run contract steps ({', '.join(contract_done)})"
                    " that cannot be undone",
                    f"finish it with `onlineschema resume {name}` instead",
                )
            self.store.set_state(name, "aborting")
            undone = 0
            for step in reversed(plan.steps):
                st = states[step.id]["state"]
                if st == "pending":
                    continue
                if not step.undo:
                    if step.action == "backfill" and not step.details.get("only_null"):
                        log.warning("abort_keeps_backfilled_rows", migration=name, step=step.id)
                    continue
                self._undo(name, step)
                undone += 1
            self.store.set_state(name, "aborted")
            log.info("migration_aborted", migration=name, steps_undone=undone)
            return Result(name, "aborted", undone, 0, time.monotonic() - t0, plan)
        except LockBudgetExhausted as exc:
            self.store.set_state(name, "failed", str(exc))
            raise
        finally:
            self.store.unlock(name)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Migrations with their steps and backfill progress, as plain data."""
        rows = [self.store.require(name)] if name else self.store.all()
        out = []
        for row in rows:
            plan = Plan.from_dict(row["plan"])
            states = self.store.steps(row["name"])
            fills = {b["step_id"]: b for b in self.store.backfills(row["name"])}
            steps = []
            for s in plan.steps:
                st = states.get(s.id, {})
                entry: dict[str, Any] = {
                    "id": s.id,
                    "phase": s.phase,
                    "description": s.description,
                    "state": st.get("state"),
                    "attempts": st.get("attempts"),
                    "last_error": st.get("last_error"),
                }
                b = fills.get(s.id)
                if b:
                    # rate and ETA as the running backfill measured them (wall time, so
                    # throttled time counts); ETA only while the step is unfinished
                    rate = b["rows_per_second"]
                    eta = b["eta_seconds"] if st.get("state") != "done" else 0.0
                    entry["backfill"] = {
                        "rows_done": b["rows_done"],
                        "rows_total": b["rows_total"],
                        "progress": b["progress"],
                        "rows_per_second": round(rate, 1) if rate else None,
                        "eta_seconds": round(eta, 1) if eta is not None else None,
                        "batches": b["batches"],
                        "batch_size": b["batch_size"],
                        "busy_seconds": round(b["busy_seconds"] or 0.0, 3),
                        "throttled_seconds": round(b["throttled_seconds"] or 0.0, 3),
                        "throttle_reason": b["throttle_reason"],
                        "workers": b["workers"],
                        "chunks": b["chunks"],
                    }
                steps.append(entry)
            out.append(
                {
                    "name": row["name"],
                    "state": row["state"],
                    "plan_hash": row["plan_hash"],
                    "created_at": row["created_at"].isoformat(),
                    "updated_at": row["updated_at"].isoformat(),
                    "last_error": row["last_error"],
                    "steps": steps,
                }
            )
        return out

    # --- running --------------------------------------------------------------------

    def _lock(self, name: str) -> None:
        self.store.ensure()
        if not self.store.try_lock(name):
            holder = self.store.lock_holder(name)
            who = ""
            fix = "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`"
            if holder:
                who = (f" (database session pid {holder['pid']}, application"
                       f" {holder.get('application_name') or '?'}, {holder.get('state') or '?'})")
                fix += (
                    f". If that process died, its session may still be finishing a statement;"
                    f" it ends by itself, or end it with SELECT pg_terminate_backend({holder['pid']})"
                )
            raise AlreadyRunning(f"migration {name!r} is being run by another process{who}", fix)

    def _run(self, name: str, plan: Plan, *, contract: bool = False) -> Result:
        t0 = time.monotonic()
        run = skipped = 0
        states = self.store.steps(name)
        total = len(plan.steps)
        # once `contract` has started a breaking step, a resume (after a crash or a
        # lock-budget pause) finishes the contract phase instead of stopping in it
        contract = contract or any(
            s.phase == "contract" and s.breaking and states[s.id]["state"] != "pending"
            for s in plan.steps
        )
        try:
            for i, step in enumerate(plan.steps):
                if states[step.id]["state"] == "done":
                    continue
                if step.phase == "contract" and step.breaking and not contract:
                    self.store.set_state(name, "awaiting_contract")
                    log.info("migration_awaiting_contract", migration=name)
                    return Result(
                        name, "awaiting_contract", run, skipped, time.monotonic() - t0, plan
                    )
                if self.store.control(name).get("paused"):
                    raise Paused(
                        f"migration {name} was paused; `onlineschema resume {name}` continues it"
                    )
                if self.observer:
                    self.observer.step_started(step, i, total)
                did = self._step(name, step)
                run += did
                skipped += not did
                if self.observer:
                    self.observer.step_finished(step, i, total, not did)
            # a pause asked for while the last step ran still stops here: the migration
            # stays resumable (and abortable) instead of silently completing
            if self.store.control(name).get("paused"):
                raise Paused(
                    f"migration {name} was paused; `onlineschema resume {name}` continues it"
                )
        except (LockBudgetExhausted, Paused) as exc:
            self.store.set_state(name, "paused", str(exc))
            log.warning("migration_paused", migration=name, reason=str(exc))
            raise
        except OnlineSchemaError as exc:
            self.store.set_state(name, "failed", str(exc))
            raise
        except psycopg.Error as exc:
            self.store.set_state(name, "failed", str(exc))
            raise
        self.store.set_state(name, "completed")
        secs = time.monotonic() - t0
        log.info(
            "migration_completed",
            migration=name,
            steps_run=run,
            steps_skipped=skipped,
            seconds=round(secs, 3),
        )
        return Result(name, "completed", run, skipped, secs, plan)

    def _check(self, query: str | None) -> bool:
        if not query:
            return False
        with self.conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
            return bool(row and row[0])

    def _step(self, name: str, step: Step) -> bool:
        """Run one step; False when it was found already done."""
        slog = log.bind(migration=name, step=step.id)
        self.store.step_started(name, step.id)
        t0 = time.monotonic()
        if (
            not step.transactional
            and step.action != "create_index"
            and self._check(step.postcondition)
        ):
            self.store.step_state(name, step.id, "done")
            slog.info("step_skipped", reason="postcondition already holds")
            return False
        slog.info("step_started", action=step.action, lock=step.lock_text, tables=step.tables)
        try:
            if step.action == "backfill":
                self._backfill(name, step)
            elif step.action == "create_index":
                self._create_index(name, step)
            elif step.transactional:
                self._transactional(name, step)
            else:
                self._non_transactional(name, step, step.statements)
                self.store.step_state(name, step.id, "done")
        except (LockBudgetExhausted, Paused) as exc:
            self.store.step_state(name, step.id, "failed", str(exc))
            raise
        except StepFailed as exc:
            self.store.step_state(name, step.id, "failed", str(exc))
            raise
        except psycopg.Error as exc:
            msg = (exc.diag.message_primary or str(exc)).strip()
            self.store.step_state(name, step.id, "failed", msg)
            raise StepFailed(step.id, msg, _hint(step, exc)) from exc
        if step.postcondition and not self._check(step.postcondition):
            self.store.step_state(name, step.id, "failed", "postcondition does not hold")
            raise StepFailed(step.id, "the step ran but its result is not in the catalog")
        slog.info("step_done", seconds=round(time.monotonic() - t0, 3))
        return True

    def _timeouts(self, step: Step) -> tuple[str, str]:
        stmt = (
            self.settings.statement_timeout
            if step.statement_timeout is None
            else step.statement_timeout
        )
        return f"{int(self.settings.lock_timeout * 1000)}ms", f"{int(stmt * 1000)}ms"

    def _guard(self, step: Step, attempt: Callable[[], Any], mode: str | None = None) -> Any:
        long_tx = self.settings.long_transaction
        return guarded(
            self.conn,
            attempt,
            step_id=step.id,
            tables=step.tables,
            mode=step.lock if mode is None else mode,
            policy=self.settings.retry,
            long_transaction=self.settings.lock_timeout if long_tx is None else long_tx,
            sleep=self.sleep,
            waits_for_snapshots=step.action == "create_index",
        )

    def _transactional(self, name: str, step: Step) -> None:
        lock_timeout, stmt_timeout = self._timeouts(step)

        def attempt() -> None:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    (lock_timeout, stmt_timeout),
                )
                for stmt in step.statements:
                    cur.execute(stmt.encode())
                self.store.step_state(name, step.id, "done", cur=cur)

        self._guard(step, attempt)

    def _non_transactional(
        self, name: str, step: Step, statements: Sequence[str], lock_timeout: str | None = None
    ) -> None:
        lt, st = self._timeouts(step)

        def attempt() -> None:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('lock_timeout', %s, false),"
                    " set_config('statement_timeout', %s, false)",
                    (lock_timeout or lt, st),
                )
                try:
                    for stmt in statements:
                        cur.execute(stmt.encode())
                finally:
                    if not self.conn.broken:
                        cur.execute("RESET lock_timeout")
                        cur.execute("RESET statement_timeout")

        self._guard(step, attempt)

    def _index_state(self, schema: str, index: str) -> tuple[bool, bool] | None:
        with self.conn.cursor() as cur:
            cur.execute(ddl.q_index_state(schema, index))
            row = cur.fetchone()
        return (bool(row[0]), bool(row[1])) if row else None

    def _create_index(self, name: str, step: Step) -> None:
        """The concurrent build as a state machine: valid -> keep; invalid (or a
        ``_ccnew`` leftover) -> drop concurrently and build again; verify indisvalid."""
        info = step.details["index"]
        schema, index = info["schema"], info["name"]
        idx_lock = f"{int(self.settings.index_lock_timeout * 1000)}ms"
        self._drop_leftovers(step, schema, index)

        def attempt() -> None:
            state = self._index_state(schema, index)
            if state == (True, True):
                log.info("index_already_valid", step=step.id, index=index)
                return
            if state is not None:
                log.warning("index_invalid_dropped", step=step.id, index=index)
                self._non_transactional(name, step, [ddl.drop_index(schema, index)], idx_lock)
            try:
                self._raw_index_build(step, idx_lock)
            except pgerr.UniqueViolation as exc:
                self._non_transactional(name, step, [ddl.drop_index(schema, index)], idx_lock)
                raise StepFailed(
                    step.id,
                    f"the table has duplicate values for unique index {index}: "
                    f"{(exc.diag.message_detail or '').strip()}",
                    "remove the duplicates, then `onlineschema resume`",
                ) from exc

        # The build takes SHARE UPDATE EXCLUSIVE but, like a SHARE lock, waits for every
        # transaction that may write the table: wait those out before it starts, so a
        # build is never left half-done (invalid) behind them.
        self._guard(step, attempt, mode="ShareLock")
        if self._index_state(schema, index) != (True, True):
            raise StepFailed(step.id, f"index {index} is not valid after its build")
        self.store.step_state(name, step.id, "done")

    def _raw_index_build(self, step: Step, idx_lock: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, false),"
                " set_config('statement_timeout', '0', false)",
                (idx_lock,),
            )
            try:
                for stmt in step.statements:
                    cur.execute(stmt.encode())
            finally:
                if not self.conn.broken:
                    cur.execute("RESET lock_timeout")
                    cur.execute("RESET statement_timeout")

    def _drop_leftovers(self, step: Step, schema: str, index: str) -> None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND NOT i.indisvalid AND starts_with(c.relname, %s)",
                (schema, index + "_cc"),
            )
            pattern = re.compile(re.escape(index) + r"_cc(new|old)\d*")
            leftovers = [r["relname"] for r in cur.fetchall() if pattern.fullmatch(r["relname"])]
        for left in leftovers:
            log.warning("index_leftover_dropped", step=step.id, index=left)
            self._non_transactional(
                "",
                step,
                [ddl.drop_index(schema, left)],
                f"{int(self.settings.index_lock_timeout * 1000)}ms",
            )

    def _backfill(self, name: str, step: Step) -> None:
        runner = BackfillRunner(
            self.conn,
            self.store,
            name,
            step.id,
            step.details,
            self.settings.backfill,
            lock_timeout=self.settings.lock_timeout,
            retry=self.settings.retry,
            sleep=self.sleep,
            observer=self.observer,
            workers=self._workers,
        )
        runner.run()
        self.store.step_state(name, step.id, "done")

    def _join(self, name: str, workers: int) -> Result:
        """Work on the chunks of the backfill another process is running for ``name``."""
        t0 = time.monotonic()
        row = self.store.require(name)
        plan = Plan.from_dict(row["plan"])
        states = self.store.steps(name)
        current = next((s for s in plan.steps if states[s.id]["state"] != "done"), None)
        if (
            current is None
            or current.action != "backfill"
            or states[current.id]["state"] != "running"
        ):
            raise AlreadyRunning(
                f"migration {name!r} is being run by another process and is not in a backfill"
                " that workers could join",
                "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`",
            )
        runner = BackfillRunner(
            self.conn,
            self.store,
            name,
            current.id,
            current.details,
            self.settings.backfill,
            lock_timeout=self.settings.lock_timeout,
            retry=self.settings.retry,
            sleep=self.sleep,
            workers=workers,
            join=True,
        )
        self.joining = True
        try:
            runner.run()
        except NotJoinable as exc:
            raise AlreadyRunning(str(exc), "try again in a moment") from None
        state = (self.store.get(name) or row)["state"]
        log.info("backfill_join_done", migration=name, step=current.id)
        return Result(name, state, 0, 0, time.monotonic() - t0, plan)

    def backfill(
        self,
        table: str,
        set: dict[str, str] | Sequence[tuple[str, str]],
        *,
        where: str | None = None,
        schema: str | None = None,
        name: str | None = None,
        workers: int | None = None,
    ) -> Result:
        """``UPDATE table SET ... [WHERE ...]`` as a batched, resumable, throttled
        migration of its own (data only): same state, pause, ``set`` and progress as the
        backfill phase of any migration; running it again with the same name resumes it
        (or, with ``workers``, joins the process running it)."""
        change = Backfill(table, set, where=where, schema=schema)
        return self.apply([change], name, workers=workers)

    def _undo(self, name: str, step: Step) -> None:
        log.info("step_undo", migration=name, step=step.id)
        for action in step.undo:
            brief = action.transactional and not action.scans
            undo_step = replace(
                step,
                id=f"undo.{step.id}",
                lock="AccessExclusiveLock" if brief else "ShareUpdateExclusiveLock",
                statements=(action.sql,),
                statement_timeout=None if brief else 0,
            )
            if action.transactional:
                lt, st = self._timeouts(undo_step)

                def attempt(sql_text: str = action.sql, lt: str = lt, st: str = st) -> None:
                    with self.conn.transaction(), self.conn.cursor() as cur:
                        cur.execute(
                            "SELECT set_config('lock_timeout', %s, true),"
                            " set_config('statement_timeout', %s, true)",
                            (lt, st),
                        )
                        cur.execute(sql_text.encode())

                self._guard(undo_step, attempt)
            else:
                self._non_transactional(
                    name,
                    undo_step,
                    [action.sql],
                    f"{int(self.settings.index_lock_timeout * 1000)}ms",
                )
        self.store.step_state(name, step.id, "undone")


def _hint(step: Step, exc: psycopg.Error) -> str | None:
    if isinstance(exc, pgerr.CheckViolation) and step.action == "validate_constraint":
        return (
            "existing rows break the constraint: fix them (e.g. a Backfill), then"
            " `onlineschema resume`, or `onlineschema abort` to remove it"
        )
    if isinstance(exc, pgerr.ForeignKeyViolation):
        return (
            "existing rows reference missing rows: fix them, then `onlineschema resume`,"
            " or `onlineschema abort`"
        )
    if isinstance(exc, pgerr.NotNullViolation):
        return "some rows are still NULL: backfill them, then `onlineschema resume`"
    if isinstance(exc, pgerr.QueryCanceled):
        return "the statement was cancelled (statement_timeout or an operator); `onlineschema resume` retries it"
    return None


def changes_of(row: dict[str, Any]) -> list[Change]:
    return [change_from_dict(d) for d in row["changes"]]


def with_lock_timeout(settings: Settings, lock_timeout: float) -> Settings:
    return replace(settings, lock_timeout=lock_timeout)
