"""The ``onlineschema`` command line, on top of :class:`onlineschema.Executor`.

Exit codes (the contract scripts rely on):

* 0: done (or nothing left to do);
* 2: refused before any DDL ran: bad input, unsupported statement, unknown migration,
  already running, cannot connect, no confirmation;
* 3: stopped with the migration resumable (lock-wait budget spent, paused, interrupted):
  ``onlineschema resume NAME`` continues it;
* 1: anything else.

Plans, tables and ``--format json`` output go to stdout; logs, progress bars and errors
go to stderr, so ``onlineschema plan --format json ... | jq`` works.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any, TypeVar

import click
import psycopg
import structlog

from ..backfill import BackfillSettings
from ..changes import Backfill, Change
from ..errors import OnlineSchemaError, Refused, Terminated, interruption
from ..executor import (
    Executor,
    Result,
    Settings,
    changes_hash,
    default_name,
)
from ..executor.lifecycle import Command, MigrationState, Outcome, decide
from ..executor.script import render_sql_script
from ..locks import RetryPolicy
from ..plan import Plan
from .common import DURATION, open_executor, require_dsn
from .common import normalize_dsn as normalize_dsn  # public: tests and integrations use it
from .ops import register as register_ops
from .ops import run_options, watch_option
from .settings import parse_pairs, start_settings_options, with_start_settings
from .settings import setting_value as setting_value  # kept importable here

log = structlog.stdlib.get_logger("onlineschema.cli")

T = TypeVar("T")

DSN_ENV = ("ONLINESCHEMA_DSN", "DATABASE_URL")


class Stopped(OnlineSchemaError):
    """The migration stopped part-way and can be resumed (interrupted, paused, budget)."""

    exit_code = 3


@dataclass
class Options:
    """Global options, filled in by the group callback (also read by :func:`main`)."""

    log_format: str = "console"
    log_level: str = "info"
    state_schema: str = "onlineschema"
    reconnect_budget: float = Settings.reconnect_budget

    def settings(
        self, lock_timeout: float | None = None, max_lock_wait: float | None = None
    ) -> Settings:
        s = Settings(state_schema=self.state_schema, reconnect_budget=self.reconnect_budget)
        if lock_timeout is not None:
            s = replace(s, lock_timeout=lock_timeout)
        if max_lock_wait is not None:
            s = replace(s, retry=replace(s.retry, max_wait=max_lock_wait))
        return with_start_settings(s)  # --set/--settings-file/ONLINESCHEMA_SET, if any


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


# --- shared options -----------------------------------------------------------------


def dsn_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dsn",
        envvar=list(DSN_ENV),
        show_envvar=True,
        metavar="DSN",
        help="Database to change (libpq DSN or URL; postgresql+psycopg:// URLs work too).",
    )(f)


def input_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--allow-raw",
        is_flag=True,
        help="Run statements that cannot be made online as written (flagged RAW in the plan).",
    )(f)
    f = click.option(
        "--file",
        "file",
        type=click.File("r", encoding="utf-8"),
        help="Read the SQL from a file ('-' for stdin).",
    )(f)
    f = click.option("--sql", "sql_text", metavar="TEXT", help="The SQL of the migration.")(f)
    return f


def lock_timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--lock-timeout",
        type=DURATION,
        default=None,
        metavar="DURATION",
        help="Longest any step may make the application wait for a lock (default 500ms).",
    )(f)


def max_lock_wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
    default = RetryPolicy().max_wait
    return click.option(
        "--max-lock-wait",
        type=DURATION,
        default=None,
        metavar="DURATION",
        help=f"Total time a step may keep retrying for its lock before the migration stops,"
        f" resumable, with exit 3 (default {default:g}s).",
    )(f)


def workers_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Backfill with N workers, each on its own connection (default 1). With resume,"
        " while another process runs the migration's backfill: join it with N more workers.",
    )(f)


def read_changes(sql_text: str | None, file: IO[str] | None, allow_raw: bool) -> list[Change]:
    from ..sqlinput import parse_sql

    if (sql_text is None) == (file is None):
        raise click.UsageError("give the migration with exactly one of --sql TEXT or --file PATH")
    text = sql_text if sql_text is not None else file.read()  # type: ignore[union-attr]
    return parse_sql(text, allow_raw=allow_raw)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (a service manager, ``kubectl delete pod``) stops it
    as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run_migration(ex: Executor, name: str, work: Callable[[], T], *, undoing: bool = False) -> T:
    """Run ``work`` with progress bars on a terminal; say how to go on when it stops
    (Ctrl-C and SIGTERM stop it resumably: exit 3, the migration paused)."""
    from .progress import progress_observer

    go_on = (
        f"`onlineschema abort {name}` again finishes undoing it"
        if undoing
        else f"`onlineschema resume {name}` continues it, `onlineschema abort {name}` undoes it"
    )
    with progress_observer() as display:
        ex.observer = display
        try:
            with sigterm_as_interrupt():
                return work()
        except KeyboardInterrupt as exc:  # the executor recorded the stop (paused)
            raise Stopped(
                f"{interruption(exc)}; migration {name} stopped part-way\n  fix: {go_on}"
            ) from None
        except OnlineSchemaError as exc:
            if exc.exit_code == 3 and (undoing or f"resume {name}" not in str(exc)):
                raise Stopped(f"{exc}\n  fix: {go_on}") from exc
            if exc.exit_code == 1 and f" {name}`" not in str(exc):
                hint = f"`onlineschema status {name}` shows where it stopped; {go_on}"
                raise _with_hint(exc, hint) from exc
            raise
        finally:
            ex.observer = None


def _with_hint(exc: OnlineSchemaError, hint: str) -> OnlineSchemaError:
    out = OnlineSchemaError(f"{exc}\n  then: {hint}")
    out.exit_code = exc.exit_code
    return out


def report(result: Result, *, already: bool = False) -> None:
    """One line (or two) on stdout about how the migration ended."""
    name = result.name
    if already and result.state != "awaiting_contract":
        click.echo(f"migration {name} is already {result.state}; nothing was run")
    elif result.state == "completed":
        click.echo(
            f"migration {name} completed: {result.steps_run} step(s) run,"
            f" {result.steps_skipped} found already done, in {result.seconds:.1f}s"
        )
    elif result.state == "awaiting_contract":
        click.echo(
            f"migration {name}: expand, backfill and validate phases done; the contract phase"
            " changes what running code sees.\n"
            f"Run `onlineschema contract {name}` once the application no longer uses the old"
            " shape."
        )
    elif result.state == "aborted":
        click.echo(
            f"migration {name} aborted: {result.steps_run} step(s) undone in"
            f" {result.seconds:.1f}s; the tables are as they were before it"
        )
    else:
        click.echo(f"migration {name}: {result.state}")


def confirm_or_refuse(question: str, yes: bool) -> None:
    if yes:
        return
    if not _stdin_is_terminal():
        raise Refused(
            "this command needs a confirmation and there is no terminal to ask on",
            "pass --yes",
        )
    if not click.confirm(question, default=False, err=True):
        raise Refused("not confirmed; nothing was changed")


# --- the commands ---------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"], case_sensitive=False),
    default="console",
    show_default=True,
    help="Logs on stderr: human-readable, or one JSON object per line.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="debug also prints tracebacks of unexpected errors.",
)
@click.option(
    "--state-schema",
    default="onlineschema",
    show_default=True,
    metavar="SCHEMA",
    help="Schema holding the migrations' state.",
)
@click.option(
    "--reconnect-budget",
    type=DURATION,
    default=f"{Settings.reconnect_budget:g}s",
    show_default=True,
    envvar="ONLINESCHEMA_RECONNECT_BUDGET",
    help="How long to keep connecting again when the connection to the database is lost"
    " (a restart, a failover, a network blip); past it: exit 3, resumable.",
)
@click.version_option(package_name="onlineschema", prog_name="onlineschema")
@click.pass_context
def cli(
    ctx: click.Context,
    log_format: str,
    log_level: str,
    state_schema: str,
    reconnect_budget: float,
) -> None:
    """Change the schema of a live PostgreSQL database without blocking the application.

    The database comes from --dsn, else ONLINESCHEMA_DSN, else DATABASE_URL.
    Exit codes: 0 done, 2 refused before any change, 3 stopped and resumable, 1 other.
    """
    from .logs import configure

    opts = ctx.ensure_object(Options)
    opts.log_format = log_format.lower()
    opts.log_level = log_level.lower()
    opts.state_schema = state_schema
    opts.reconnect_budget = reconnect_budget
    configure(opts.log_format, opts.log_level)


@cli.command()
@dsn_option
@input_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "sql"]),
    default="text",
    show_default=True,
    help="sql: a script for psql with the timeouts and transactions the executor uses.",
)
@lock_timeout_option
@click.pass_obj
def plan(
    opts: Options,
    dsn: str | None,
    sql_text: str | None,
    file: IO[str] | None,
    allow_raw: bool,
    fmt: str,
    lock_timeout: float | None,
) -> int:
    """Show the online plan for a SQL migration. Runs no DDL."""
    dsn = require_dsn(dsn)
    changes = read_changes(sql_text, file, allow_raw)
    settings = opts.settings(lock_timeout)
    with open_executor(dsn, settings) as ex:
        the_plan = ex.plan(changes)
        pooler = ex.pooler
    if fmt == "json":
        click.echo(the_plan.to_json())
    elif fmt == "sql":
        click.echo(
            render_sql_script(the_plan.steps, settings)
        )
    else:
        click.echo(the_plan.render_text())
        if pooler is not None:
            click.echo(f"\nConnection: {pooler.describe()}")
    return 0


@cli.command()
@run_options
@dsn_option
@input_options
@click.option("--name", metavar="NAME", help="Migration name (default: from the changes' hash).")
@lock_timeout_option
@max_lock_wait_option
@workers_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@start_settings_options()
@click.pass_obj
def apply(
    opts: Options,
    dsn: str | None,
    sql_text: str | None,
    file: IO[str] | None,
    allow_raw: bool,
    name: str | None,
    lock_timeout: float | None,
    max_lock_wait: float | None,
    workers: int | None,
    yes: bool,
) -> int:
    """Plan and run a SQL migration online (same name and changes again: resume it)."""
    dsn = require_dsn(dsn)
    if not yes and not _stdin_is_terminal():
        raise Refused(
            "apply asks for confirmation and there is no terminal to ask on",
            "pass --yes to apply without asking (check the plan first with `onlineschema plan`)",
        )
    changes = read_changes(sql_text, file, allow_raw)
    with open_executor(dsn, opts.settings(lock_timeout, max_lock_wait)) as ex:
        return _apply(ex, changes, name, yes, workers)


def _apply(
    ex: Executor,
    changes: Sequence[Change],
    name: str | None,
    yes: bool,
    workers: int | None = None,
) -> int:
    name = name or default_name(changes)
    existing = ex.record(name)
    if existing is not None and (
        existing["changes_hash"] != changes_hash(changes)
        or decide(Command.APPLY, existing["state"]) is not Outcome.RUN
    ):
        # nothing to confirm: apply() refuses, or reports it done
        result = ex.apply(changes, name)
        report(result, already=True)
        return 0
    if not yes:
        if existing is not None:
            shown = Plan.from_dict(existing["plan"])
            click.echo(shown.render_text())
            question = f"Migration {name} is {existing['state']}: resume it?"
        else:
            click.echo(ex.plan(changes).render_text())
            question = f"Apply this plan as migration {name}?"
        confirm_or_refuse(question, yes)
    result = run_migration(ex, name, lambda: ex.apply(changes, name, workers=workers))
    if ex.joining:
        report_joined(result)
    else:
        report(result)
    return 0


@cli.command()
@watch_option
@dsn_option
@click.argument("name", required=False)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_obj
def status(opts: Options, dsn: str | None, name: str | None, fmt: str) -> int:
    """Show one migration's steps and backfill progress, or list all migrations."""
    with open_executor(dsn, opts.settings()) as ex:
        data = ex.status(name)
        pooler = ex.pooler
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return 0
    if pooler is not None:
        click.echo(f"Connection: {pooler.describe()}")
    from rich.console import Console

    from .views import list_table, migration_view, stdout_console

    console = stdout_console(Console)
    if name is None:
        console.print(list_table(data, opts.state_schema))
    else:
        for mig in data:
            for item in migration_view(mig):
                console.print(item)
    return 0


@cli.command()
@run_options
@dsn_option
@click.argument("name")
@lock_timeout_option
@max_lock_wait_option
@workers_option
@start_settings_options()
@click.pass_obj
def resume(
    opts: Options,
    dsn: str | None,
    name: str,
    lock_timeout: float | None,
    max_lock_wait: float | None,
    workers: int | None,
) -> int:
    """Carry on a migration from its first unfinished step (after a crash, pause or exit 3).

    With --workers while another process runs the migration's backfill: work on that
    backfill's chunks too, and exit 0 when none is left to take (later steps are the
    other process's). Without --workers, a migration that another process runs is
    refused (exit 2)."""
    with open_executor(dsn, opts.settings(lock_timeout, max_lock_wait)) as ex:
        before = ex.record(name)  # None: resume refuses (unknown migration)
        result = run_migration(ex, name, lambda: ex.resume(name, workers=workers))
    if ex.joining:
        report_joined(result)
    else:
        report(result, already=before is not None and MigrationState(before["state"]).finished)
    return 0


def report_joined(result: Result) -> None:
    click.echo(
        f"migration {result.name}: joined its backfill until no chunk was left to take, in"
        f" {result.seconds:.1f}s; the process running the migration finishes it"
    )


@cli.command()
@dsn_option
@click.argument("name")
@click.pass_obj
def pause(opts: Options, dsn: str | None, name: str) -> int:
    """Ask the process running NAME to stop at its next safe point (it exits 3)."""
    with open_executor(dsn, opts.settings()) as ex:
        ex.pause(name)
    click.echo(
        f"pause requested for migration {name}: the process running it stops at the next"
        f" batch or step boundary; `onlineschema resume {name}` continues it"
    )
    return 0


@cli.command()
@dsn_option
@click.argument("name")
@lock_timeout_option
@max_lock_wait_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def abort(
    opts: Options,
    dsn: str | None,
    name: str,
    lock_timeout: float | None,
    max_lock_wait: float | None,
    yes: bool,
) -> int:
    """Undo what an unfinished migration created, leaving the tables as they were."""
    with open_executor(dsn, opts.settings(lock_timeout, max_lock_wait)) as ex:
        state, todo = ex.undo_preview(name)
        if not yes and _stdin_is_terminal():
            click.echo(f"migration {name} is {state}; abort undoes:")
            for s in todo:
                click.echo(f"  - {s.description}")
            if not todo:
                click.echo("  (nothing was created yet)")
            confirm_or_refuse(f"Abort migration {name}?", yes)
        result = run_migration(ex, name, lambda: ex.abort(name), undoing=True)
    report(result)
    return 0


@cli.command()
@run_options
@dsn_option
@click.argument("name")
@lock_timeout_option
@max_lock_wait_option
@click.pass_obj
def contract(
    opts: Options,
    dsn: str | None,
    name: str,
    lock_timeout: float | None,
    max_lock_wait: float | None,
) -> int:
    """Run the contract phase of a migration that is waiting for it."""
    with open_executor(dsn, opts.settings(lock_timeout, max_lock_wait)) as ex:
        result = run_migration(ex, name, lambda: ex.contract(name))
    report(result)
    return 0


@cli.command("set")
@dsn_option
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_obj
def set_(opts: Options, dsn: str | None, name: str, pairs: tuple[str, ...]) -> int:
    """Change live backfill settings of a migration (picked up within seconds).

    Keys: batch_target, batch_min, batch_max, duty_cycle, sleep, max_wal_rate,
    max_replica_lag, ... (docs/backfill.md lists them). Durations take units
    (batch_target=300ms); duty_cycle takes a share or a percentage; sizes take kB, MB or
    GB (max_wal_rate=4MB: a second).
    """
    try:
        settings: dict[str, Any] = parse_pairs(pairs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY=VALUE") from None
    with open_executor(dsn, opts.settings()) as ex:
        ex.set(name, settings)
    interval = BackfillSettings().control_interval
    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    click.echo(
        f"settings of migration {name} updated: {shown}; a running backfill picks them up"
        f" within {interval:g}s"
    )
    return 0


@cli.command()
@run_options
@dsn_option
@click.option(
    "--table", required=True, metavar="TABLE", help="Table to update (may be schema.table)."
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    required=True,
    metavar="'COL = EXPR'",
    help="An assignment, as in UPDATE ... SET (repeat for more columns).",
)
@click.option("--where", metavar="COND", help="Only update rows matching this condition.")
@click.option("--name", metavar="NAME", help="Migration name (default: from the changes' hash).")
@lock_timeout_option
@max_lock_wait_option
@workers_option
@start_settings_options("--setting")
@click.pass_obj
def backfill(
    opts: Options,
    dsn: str | None,
    table: str,
    sets: tuple[str, ...],
    where: str | None,
    name: str | None,
    lock_timeout: float | None,
    max_lock_wait: float | None,
    workers: int | None,
) -> int:
    """Update existing rows in short batches, exactly once, resumably (data only).

    The same command again is the same migration: it resumes an unfinished run and does
    nothing after a finished one. Give --name to run it once more.
    """
    dsn = require_dsn(dsn)
    change = backfill_change(table, sets, where)
    with open_executor(dsn, opts.settings(lock_timeout, max_lock_wait)) as ex:
        return _apply(ex, [change], name, yes=True, workers=workers)


def backfill_change(table: str, sets: Sequence[str], where: str | None) -> Backfill:
    """Build the Backfill with PostgreSQL's own parser: exactly one ``UPDATE`` statement,
    so no text given here can smuggle in a second statement."""
    import pglast

    from ..sqlinput import parse_sql

    # Parsed, never executed: the statement's parts are re-composed by ddl.py.
    text = f"UPDATE {table} SET {', '.join(sets)}" + (f" WHERE {where}" if where else "")  # noqa: S608
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise Refused(
            f"--table/--set/--where do not make one UPDATE statement: {exc}\n  in: {text}",
            "write --table name --set 'column = expression' [--where 'condition']",
        ) from None
    if len(statements) != 1 or not isinstance(statements[0].stmt, pglast.ast.UpdateStmt):
        raise Refused(
            f"--table/--set/--where must make exactly one UPDATE statement, got: {text}",
            "write --table name --set 'column = expression' [--where 'condition']",
        )
    changes = parse_sql(text)
    if len(changes) != 1 or not isinstance(changes[0], Backfill):
        raise Refused(f"{text!r} is not a backfill onlineschema can run")
    return changes[0]


@cli.command()
@click.option(
    "--rows", type=int, default=200_000, show_default=True, help="Rows in the orders table."
)
@click.option(
    "--duration",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Seconds of live workload per run, at least; the migration starts after 40%"
    " of it.  [default: 8s]",
)
@click.option(
    "--blocker",
    type=DURATION,
    default=None,
    metavar="SECONDS",
    help="Have a session hold a read lock on the table in a transaction that lasts"
    " this long after the migration starts.",
)
@click.option("--keep", is_flag=True, help="Keep the demo server running at the end.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="PATH",
    help="Where to write the latency plot (PNG)  [default: ./onlineschema-demo.png]",
)
@click.pass_context
def demo(
    ctx: click.Context,
    rows: int,
    duration: float | None,
    blocker: float | None,
    keep: bool,
    plot: str | None,
) -> int:
    """Run a migration as plain SQL and through onlineschema, side by side.

    On an embedded PostgreSQL 18 (pip install 'onlineschema[embedded]'), under a live
    read/write workload; prints what the application saw during each migration and
    writes a plot of its latency over time.
    """
    try:
        demo_module = importlib.import_module("onlineschema.demo")
    except ModuleNotFoundError as exc:
        if exc.name == "onlineschema.demo":
            raise click.ClickException("the demo is not part of this installation") from None
        raise click.ClickException(
            f"the demo needs {exc.name}: pip install 'onlineschema[embedded]'"
        ) from None
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
    ):
        # the demo shows steps as progress: keep only warnings (e.g. waiting for a blocker)
        import logging

        logging.getLogger("onlineschema").setLevel(logging.WARNING)
    options: dict[str, Any] = {"rows": rows, "keep": keep, "plot": plot}
    if duration is not None:
        options["duration"] = duration
    if blocker is not None:
        options["blocker"] = blocker
    return int(demo_module.run_demo(**options))


# --- entry point ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    opts = Options()
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="onlineschema",
            standalone_mode=False,
            obj=opts,
        )
    except click.exceptions.Exit as exc:  # pragma: no cover - click returns it instead
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        return 1
    except OnlineSchemaError as exc:
        _error(opts, str(exc), exc.exit_code, exc)
        return exc.exit_code
    except psycopg.Error as exc:
        text = (exc.diag.message_primary if exc.diag else None) or str(exc)
        _error(opts, f"database error ({type(exc).__name__}): {text.strip()}", 1, exc)
        return 1
    except Exception as exc:
        _error(opts, f"{type(exc).__name__}: {exc}", 1, exc)
        return 1
    return int(rv or 0)


def _error(opts: Options, message: str, code: int, exc: BaseException) -> None:
    debug = opts.log_level == "debug"
    if opts.log_format == "json":
        log.error(
            "command_failed",
            error=message.rstrip(),
            exit_code=code,
            exc_info=exc if debug and code == 1 else None,
        )
        return
    click.echo(f"error: {message.rstrip()}", err=True)
    if debug and code == 1:
        traceback.print_exception(exc, file=sys.stderr)


register_ops(cli)  # verify
cli.add_command(importlib.import_module("onlineschema.integrations.prisma_cli").prisma)
