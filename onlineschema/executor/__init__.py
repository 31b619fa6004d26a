"""The executor: runs a plan step by step, records each step with its work, resumes.

One autocommit connection does everything. A transactional step runs inside
``conn.transaction()`` with ``SET LOCAL lock_timeout`` and ``statement_timeout`` and
records itself as done in the same transaction. A ``CONCURRENTLY`` step runs outside a
transaction and is reconciled by its postcondition (an index counts as built only when
``pg_index.indisvalid``). An advisory lock keeps a second executor off the same migration.

The package: ``lifecycle`` (migration states and what each command does in them),
``steps`` (one handler per step kind: run and render), ``index_build`` (the concurrent
index build), ``session`` (the one place timeouts are decided), ``script`` (the plan as a
psql script), ``status`` (the status view), ``settings`` (Settings, parse_duration),
``run`` (the step loop, abort's undo, joining a backfill; Result), ``locking`` (the
advisory lock or pooler lease of a migration), ``preflight`` (the checked plan, ``set``'s
checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from ..changes import Backfill, Change, changes_to_json
from ..connection import APPLICATION_NAME, ConnectLike, connection
from ..errors import AlreadyRunning, Refused, interruption
from ..observe import run_observed
from ..plan import Plan, Step
from ..planner import PlanResult
from ..pooler import Pooler, detect
from ..reconnect import carry_on, connect, conninfo_of, drop_if_cut_short, interrupt_behind
from ..state import StateStore
from ..verify import verify_before_contract
from .lifecycle import Command, MigrationState, Outcome, decide, hold_contract, undo_preview
from .lifecycle import MigrationState as S
from .locking import MigrationLock
from .preflight import check_backfill_settings, plan_checked
from .run import Result, abort_steps, join_backfill, joinable_backfill, run_steps
from .runtime import Observer, Runtime
from .session import Policy
from .settings import Settings, parse_duration
from .status import status_view
from .steps import backfill_runner

__all__ = [
    "Executor",
    "MigrationState",
    "Observer",
    "Result",
    "Settings",
    "apply_through_contract",
    "changes_hash",
    "default_name",
    "parse_duration",
]

log = structlog.stdlib.get_logger("onlineschema.executor")


def changes_hash(changes: Sequence[Change]) -> str:
    return hashlib.sha256(changes_to_json(changes).encode()).hexdigest()[:16]


def default_name(changes: Sequence[Change]) -> str:
    """The name a migration gets when none is given: from its changes' hash."""
    return f"migration_{changes_hash(changes)[:10]}"


def apply_through_contract(
    ex: Executor,
    changes: Sequence[Change],
    name: str,
    *,
    workers: int | None = None,
    contract: bool = True,
) -> Result:
    """:meth:`Executor.apply`, then, when the migration stops awaiting its contract phase
    and ``contract`` is true, :meth:`Executor.contract`: what a framework's migration
    file asks for (Prisma's migration.sql, a Django migration with
    ``contract="immediately"``): the whole change, breaking steps included."""
    result = ex.apply(changes, name, workers=workers)
    if contract and result.state == MigrationState.AWAITING_CONTRACT:
        result = ex.contract(name)
    return result


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
        #: how to reach the database again when the connection is lost
        self._conninfo = conninfo_of(self.conn, APPLICATION_NAME)
        #: the connection made after one was lost (ours to close)
        self._own: psycopg.Connection[Any] | None = None
        #: the advisory lock or (through a transaction pooler) lease of a migration
        self._locks = MigrationLock(self.settings, self._conninfo)
        self.store = StateStore(self.conn, self.settings.state_schema)
        try:
            self.store.check_version()  # an older release never touches a newer schema
        except BaseException:
            self.close()
            raise

    @property
    def pooler(self) -> Pooler | None:
        """The transaction pooler between this executor and the server, if any."""
        return detect(self.conn)

    @property
    def policy(self) -> Policy:
        """The timeouts steps run under (executor/session.py decides them)."""
        return Policy.from_settings(self.settings)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None
        with contextlib.suppress(psycopg.Error):
            self._cm.__exit__(None, None, None)

    def _reconnecting(self, first: Callable[[], Result], again: Callable[[], Result]) -> Result:
        """Run ``first``; when the connection is lost, connect again within
        ``settings.reconnect_budget`` and run ``again``, which carries on from the state
        in the database (reconnect.carry_on). Past the budget: ConnectionLost (exit 3)."""
        budget = self.settings.reconnect_budget
        return carry_on(first, again, conninfo=self._conninfo, budget=budget, adopt=self._adopt)

    def _adopt(self, conn: psycopg.Connection[Any]) -> None:
        """Work on ``conn`` from now on (made after the connection was lost)."""
        if self._own is not None:
            with contextlib.suppress(psycopg.Error):
                self._own.close()
        self._own = self.conn = conn
        self.store = StateStore(conn, self.settings.state_schema)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- planning -------------------------------------------------------------------

    def plan(self, changes: Sequence[Change]) -> Plan:
        """Read the catalog, plan, and check every expression compiles. Runs no DDL."""
        return self._plan(changes).plan

    def _plan(self, changes: Sequence[Change]) -> PlanResult:
        return plan_checked(self.conn, self.policy, changes)

    # --- lifecycle ------------------------------------------------------------------

    def apply(
        self,
        changes: Sequence[Change],
        name: str | None = None,
        *,
        workers: int | None = None,
        stop_before_contract: bool = False,
        restart_aborted: bool = False,
    ) -> Result:
        """Plan and run ``changes`` as migration ``name``; with the same name and the same
        changes again, resume it; with other changes under that name, refuse.
        ``workers``: parallel backfill workers (see :meth:`resume` for joining).
        ``stop_before_contract``: hold the whole contract phase (and end the plan with a
        marker step), so the migration stops ``awaiting_contract`` until :meth:`contract`.
        ``restart_aborted``: a migration of that name that was aborted is forgotten and
        started afresh instead of refused."""
        changes = list(changes)

        def again() -> Result:
            return self._apply(changes, name, workers, stop_before_contract, restart_aborted)

        return self._reconnecting(again, again)

    def _apply(
        self,
        changes: list[Change],
        name: str | None,
        workers: int | None,
        stop_before_contract: bool,
        restart_aborted: bool,
    ) -> Result:
        digest = changes_hash(changes)
        name = name or default_name(changes)
        existing = self.store.get(name)
        if existing is not None and restart_aborted and existing["state"] == S.ABORTED:
            # e.g. an Alembic revision upgraded again after its downgrade aborted it
            log.info("alembic_restart_aborted", migration=name)
            self.store.forget(name)
            existing = None
        if existing is not None:
            state = MigrationState(existing["state"])
            if existing["changes_hash"] != digest:
                raise Refused(
                    f"migration {name!r} already exists with different changes (it is {state})",
                    "use another --name"
                    + ("" if state.finished else f", or `onlineschema abort {name}` first"),
                )
            outcome = decide(Command.APPLY, state)
            if outcome is Outcome.NOTHING:
                log.info("migration_already_applied", migration=name, state=existing["state"])
                return Result(name, state, 0, 0, 0.0, Plan.from_dict(existing["plan"]))
            if outcome is Outcome.REFUSE:
                raise Refused(
                    f"migration {name!r} was aborted",
                    "apply it again under a new --name",
                )
            return self._resume(name, workers)
        result = self._plan(changes)  # refuses bad input before any write
        plan = hold_contract(result.plan) if stop_before_contract else result.plan
        self.store.ensure()
        self._lock(name)
        try:
            if self.store.get(name) is not None:  # created meanwhile by another process
                raise AlreadyRunning(f"migration {name!r} was just started by another process")
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
            self._unlock(name)

    def resume(self, name: str, *, workers: int | None = None) -> Result:
        """Carry on from the first unfinished step (after a crash, a pause or exit 3).

        ``workers``: parallel backfill workers. When another process runs the migration
        and is in a backfill, ``workers`` makes this process join it: it works on the
        backfill's chunks and returns when none is left to claim (without ``workers`` it
        is refused with AlreadyRunning)."""

        def again() -> Result:
            return self._resume(name, workers)

        return self._reconnecting(again, again)

    def _resume(self, name: str, workers: int | None) -> Result:
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
            state = MigrationState(row["state"])
            outcome = decide(Command.RESUME, state)
            if outcome is Outcome.NOTHING:
                log.info("migration_nothing_to_resume", migration=name, state=row["state"])
                return Result(name, state, 0, 0, 0.0, Plan.from_dict(row["plan"]))
            if outcome is Outcome.REFUSE:
                raise Refused(
                    f"migration {name!r} is waiting for its contract phase",
                    f"run `onlineschema contract {name}` once the application no longer uses the old shape",
                )
            self.store.set_paused(name, False)
            self.store.set_state(name, S.RUNNING)
            self._workers = workers or 1
            return self._run(name, Plan.from_dict(row["plan"]))
        finally:
            self._unlock(name)

    def contract(self, name: str) -> Result:
        """Run the contract phase of a migration waiting for it."""
        return self._reconnecting(
            lambda: self._contract(name), lambda: self._carry_on(name, contract=True)
        )

    def _carry_on(self, name: str, *, contract: bool) -> Result:
        """After a reconnect: run ``name`` on from where the database says it is."""
        self._lock(name)
        try:
            row = self.store.require(name)
            state = MigrationState(row["state"])
            plan = Plan.from_dict(row["plan"])
            if state.finished or state is S.ABORTING:  # finished meanwhile, or not ours
                return Result(name, state, 0, 0, 0.0, plan)
            self.store.set_state(name, S.RUNNING)
            return self._run(name, plan, contract=contract)
        finally:
            self._unlock(name)

    def _contract(self, name: str) -> Result:
        self.store.require(name)
        self._lock(name)
        try:
            row = self.store.require(name)
            if decide(Command.CONTRACT, row["state"]) is not Outcome.RUN:
                raise Refused(
                    f"migration {name!r} is {row['state']}; there is no contract phase to run",
                    "run `onlineschema status` to see its state",
                )
            verify_before_contract(self, name)  # refuses (nothing dropped) on a mismatch
            self.store.set_state(name, S.RUNNING)
            return self._run(name, Plan.from_dict(row["plan"]), contract=True)
        finally:
            self._unlock(name)

    def pause(self, name: str) -> None:
        """Ask the process running ``name`` to stop at the next safe point (exit 3)."""
        self.store.require(name)
        self.store.set_paused(name, True)
        log.info("migration_pause_requested", migration=name)

    def set(self, name: str, settings: dict[str, Any]) -> None:
        """Change backfill settings of a running migration (picked up within seconds)."""
        self.store.require(name)
        check_backfill_settings(settings)
        self.store.update_settings(name, settings)

    def abort(self, name: str) -> Result:
        """Undo what the migration created (expand and validate phases), newest first."""
        return self._reconnecting(lambda: self._abort(name), lambda: self._abort(name))

    def _abort(self, name: str) -> Result:
        self.store.require(name)
        self._lock(name)
        try:
            return abort_steps(self._runtime(name))
        finally:
            self._unlock(name)

    def undo_preview(self, name: str) -> tuple[str, list[Step]]:
        """``(state, steps abort would undo, newest first)`` of migration ``name``."""
        row = self.store.require(name)
        plan = Plan.from_dict(row["plan"])
        return row["state"], undo_preview(plan, self.store.steps(name))

    def record(self, name: str) -> dict[str, Any] | None:
        """The stored record of migration ``name`` (state, changes_hash, plan...), or None."""
        return self.store.get(name)

    def require(self, name: str) -> dict[str, Any]:
        """The stored record of migration ``name``; UnknownMigration (Refused) if none."""
        return self.store.require(name)

    def stored_plan(self, name: str) -> Plan:
        """The plan migration ``name`` runs, as stored when it started."""
        return Plan.from_dict(self.store.require(name)["plan"])

    def step_states(self, name: str) -> dict[str, dict[str, Any]]:
        """Each step's stored state of migration ``name``, by step id."""
        return self.store.steps(name)

    def backfill_overrides(self, name: str) -> dict[str, Any]:
        """The backfill settings changed with :meth:`set` for migration ``name``."""
        return (self.store.control(name) or {}).get("settings") or {}

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        """The database session running migration ``name`` (its advisory lock), if any."""
        return self.store.lock_holder(name)

    def forget(self, name: str) -> None:
        """Delete the record of finished (completed or aborted) migration ``name``, once a
        framework keeps its own record of it. On the executor's connection: inside a
        transaction opened on ``ex.conn`` it commits with the framework's record."""
        row = self.store.get(name)
        if row is not None and not MigrationState(row["state"]).finished:
            raise Refused(
                f"migration {name!r} is {row['state']}: only a finished one can be forgotten",
                f"finish it with `onlineschema resume {name}`, or `onlineschema abort {name}`",
            )
        self.store.forget(name)

    def mark_interrupted(self, name: str, reason: str = "interrupted (Ctrl-C)") -> None:
        """Record that nothing runs ``name`` any more (it stays resumable): a running
        migration becomes paused."""
        row = self.store.get(name)
        if row is not None and row["state"] == S.RUNNING:
            self.store.set_state(name, S.PAUSED, reason)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Migrations with their steps and backfill progress, as plain data."""
        return status_view(self.store, name)

    # --- running --------------------------------------------------------------------

    def _runtime(self, name: str, *, workers: int | None = None) -> Runtime:
        return Runtime(
            self.conn,
            self.store,
            self.settings,
            name,
            sleep=self.sleep,
            observer=self.observer,
            workers=self._workers if workers is None else workers,
        )

    def _lock(self, name: str) -> None:
        """Hold migration ``name`` (one executor per migration): executor/locking.py."""
        self._locks.take(self.conn, self.store, name)

    def _unlock(self, name: str) -> None:
        self._reopen_if_dropped()
        self._locks.give_up(self.conn, self.store, name)

    def _reopen_if_dropped(self) -> None:
        """Work on a new connection when an interrupt cut a statement short on this one
        and it was dropped (reconnect.drop_if_cut_short): a stopped run still gives up
        its lease and records the stop. A lost connection stays lost (``broken``)."""
        drop_if_cut_short(self.conn)
        if self.conn.closed and not self.conn.broken:
            with contextlib.suppress(psycopg.Error):
                self._adopt(connect(self._conninfo))

    def _run(self, name: str, plan: Plan, *, contract: bool = False) -> Result:
        self._remember_settings(name)
        work = lambda: self._run_steps(name, plan, contract=contract)  # noqa: E731
        try:
            return run_observed(self, name, plan, work)  # hooks, metrics, observer
        except BaseException as exc:
            # Ctrl-C/SIGTERM, or an error its cleanup raised on a connection it cut short
            if isinstance(stop := interrupt_behind(exc), KeyboardInterrupt):
                self._stopped(name, stop)
            raise

    def _stopped(self, name: str, exc: KeyboardInterrupt) -> None:
        """Ctrl-C or SIGTERM stopped the run: record it (``paused``, with how) before the
        migration is given up, whoever called (the CLI, a framework's migrate, the API).
        Best effort: psycopg cancelled the running statement, the connection may be gone
        (then ``status`` shows it running with no holder; resume and abort still work)."""
        self._reopen_if_dropped()
        if self.conn.closed or self.conn.broken:
            return
        with contextlib.suppress(psycopg.Error):
            self.mark_interrupted(name, interruption(exc))

    def _remember_settings(self, name: str) -> None:
        """Backfill settings given when this run starts (``--set``, a settings file, the
        API) stay with the migration, as ``onlineschema set`` would store them: a later
        ``resume`` without them runs with them too. ``replica_dsn`` is not stored (it
        may hold a password)."""
        b = self.settings.backfill
        given = {k: getattr(b, k) for k in sorted(b.given()) if k != "replica_dsn"}
        if given:
            self.store.update_settings(name, given)

    def _run_steps(self, name: str, plan: Plan, *, contract: bool = False) -> Result:
        rt = self._runtime(name)
        return run_steps(rt, plan, contract=contract, lease=self._locks.lease)

    def _join(self, name: str, workers: int) -> Result:
        """Work on the chunks of the backfill another process is running for ``name``."""
        t0 = time.monotonic()
        found = joinable_backfill(self.store, name)
        runner = backfill_runner(self._runtime(name, workers=workers), found.step, join=True)
        self.joining = True
        return join_backfill(runner, self.store, name, found, t0)

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
