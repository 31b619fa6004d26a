"""``onlineschema prisma deploy|status``: drop-ins for ``npx prisma migrate deploy|status``.

Exit codes of ``deploy`` (those of every onlineschema command):

* 0: every migration applied and recorded (or none was pending);
* 2: refused before any change: bad input or a statement the SQL front end cannot run
  online (named with its Prisma migration), a failed migration in ``_prisma_migrations``
  (Prisma's P3009), a non-empty schema without ``_prisma_migrations`` (P3005), another
  provider in ``migration_lock.toml`` (P3019), Prisma Migrate's advisory lock held by
  someone else (P1002), no database;
* 3: stopped part-way, resumable (the lock-wait budget was spent, paused, Ctrl-C): run
  ``onlineschema prisma deploy`` again;
* 1: anything else (a step failed): fix what the message says, then deploy again.

Exit codes of ``status``:

* 0: up to date: every migration applied, none failed, none edited;
* 1: migrations are pending (``deploy`` applies them; this includes one an earlier
  deploy started and did not finish);
* 4: a failed migration blocks ``deploy`` (P3009): ``npx prisma migrate resolve``;
* 5: an applied migration's ``migration.sql`` was edited since (checksum mismatch);
* 2: could not read: no database, no migrations directory.

When several hold, the highest-priority one wins: 4, then 5, then 1. Prisma's own
``migrate status`` exits 1 for pending and failed migrations alike and says nothing about
edited ones. Rows of ``_prisma_migrations`` without a directory are listed but do not
change the exit code (Prisma ignores them too).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from ..errors import OnlineSchemaError
from ..executor import Executor, Result, parse_duration
from . import prisma as prisma_lib

if TYPE_CHECKING:
    from ..cli import Options

#: exit codes of `status`
STATUS_UP_TO_DATE = 0
STATUS_PENDING = 1
STATUS_FAILED = 4
STATUS_EDITED = 5

DEFAULT_DIR = "prisma/migrations"


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _dsn_option(f: Any) -> Any:
    return click.option(
        "--dsn",
        envvar=["ONLINESCHEMA_DSN", "DATABASE_URL"],
        show_envvar=True,
        metavar="URL",
        help="Database (Prisma's DATABASE_URL works as it is: ?schema= sets the schema).",
    )(f)


def _dir_option(f: Any) -> Any:
    return click.option(
        "--dir",
        "directory",
        default=DEFAULT_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="The Prisma migrations directory.",
    )(f)


@click.group("prisma")
def prisma() -> None:
    """Prisma Migrate: deploy migration.sql files online, and their status.

    Drop-ins for `npx prisma migrate deploy` and `npx prisma migrate status`, recording
    in _prisma_migrations exactly what Prisma records.
    """


@prisma.command()
@_dsn_option
@_dir_option
@click.option(
    "--lock-timeout",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="Longest any step may make the application wait for a lock (default 500ms).",
)
@click.option(
    "--max-lock-wait",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="Total time a step may keep retrying for its lock before deploy stops, resumable,"
    " with exit 3.",
)
@click.option(
    "--lock-wait",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="How long to wait for Prisma Migrate's advisory lock held by another deploy"
    " (default 10s, as Prisma).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Backfill with N workers, each on its own connection (default 1).",
)
@click.option(
    "--allow-raw",
    is_flag=True,
    help="Run statements that cannot be made online as written (flagged RAW in the plan).",
)
@click.pass_obj
def deploy(
    opts: Options,
    dsn: str | None,
    directory: str,
    lock_timeout: float | None,
    max_lock_wait: float | None,
    lock_wait: float | None,
    workers: int | None,
    allow_raw: bool,
) -> int:
    """Apply the pending migrations online, each recorded in _prisma_migrations once done.

    Running it again after an interruption resumes where it stopped.
    Exit: 0 done, 2 refused before any change, 3 stopped and resumable (run deploy
    again), 1 other error.
    """
    from ..cli.common import require_dsn

    target = require_dsn(dsn)
    settings = opts.settings(lock_timeout, max_lock_wait)
    try:
        result = prisma_lib.deploy(
            target,
            directory,
            settings,
            allow_raw=allow_raw,
            workers=workers,
            lock_wait=prisma_lib.LOCK_WAIT if lock_wait is None else lock_wait,
            run=_run_with_progress,
            echo=lambda text: click.echo(text, err=text.startswith(("warning", "note"))),
        )
    except OnlineSchemaError as exc:
        if exc.exit_code in (1, 3):
            out = OnlineSchemaError(
                f"{exc}\n  then: run `onlineschema prisma deploy` again: it resumes the"
                " unfinished migration and records it in _prisma_migrations once it is done"
            )
            out.exit_code = exc.exit_code
            raise out from exc
        raise
    if not result.applied:
        click.echo("No pending migrations to apply.")
    else:
        click.echo(
            f"All migrations have been successfully applied ({len(result.applied)} in"
            f" {result.seconds:.1f}s)."
        )
    return 0


def _run_with_progress(ex: Executor, name: str, work: Any) -> Result:
    from ..cli import run_migration

    result: Result = run_migration(ex, name, work)
    return result


@prisma.command()
@_dsn_option
@_dir_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: applied, pending, failed, edited and missing migrations, for scripts.",
)
@click.pass_obj
def status(opts: Options, dsn: str | None, directory: str, fmt: str) -> int:
    """Compare the migrations directory with _prisma_migrations. Changes nothing.

    Exit: 0 up to date, 1 pending migrations, 4 a failed migration blocks deploy,
    5 an applied migration was edited since, 2 cannot read.
    """
    from ..cli.common import require_dsn

    history = prisma_lib.status(require_dsn(dsn), directory, state_schema=opts.state_schema)
    if fmt == "json":
        click.echo(json.dumps(history.to_dict(), indent=2))
    else:
        _print_status(history)
    if history.failed:
        return STATUS_FAILED
    if history.edited:
        return STATUS_EDITED
    if history.pending:
        return STATUS_PENDING
    return STATUS_UP_TO_DATE


def _print_status(h: prisma_lib.History) -> None:
    n = len(h.local)
    click.echo(f"{n} migration{'s' if n != 1 else ''} found in the migrations directory")
    click.echo(f"{len(h.applied)} applied in {h.schema}.{prisma_lib.MIGRATIONS_TABLE}")
    if h.failed:
        click.echo("\nFailed migrations (deploy will not run until they are resolved):")
        for r in h.failed:
            click.echo(f"  {r.migration_name}  (started {r.started_at:%Y-%m-%d %H:%M:%S %Z})")
        click.echo(
            "  fix: `npx prisma migrate resolve --rolled-back NAME` if you undid it, or"
            " `--applied NAME` if you finished it by hand"
        )
    if h.pending:
        click.echo("\nPending migrations (`onlineschema prisma deploy` applies them):")
        for m in h.pending:
            extra = ""
            if m.name in h.unfinished:
                os_name, state = h.unfinished[m.name]
                extra = (
                    f"  (started by an earlier deploy: onlineschema migration {os_name} is {state})"
                )
            click.echo(f"  {m.name}{extra}")
    if h.edited:
        click.echo("\nEdited migrations (applied, but migration.sql changed since):")
        for e in h.edited:
            click.echo(
                f"  {e.name}  (recorded checksum {e.recorded[:12]}…, file {e.current[:12]}…)"
            )
        click.echo(
            "  the edits are NOT in the database: restore the files, and put new changes in"
            " a new migration"
        )
    if h.missing_locally:
        click.echo("\nApplied migrations without a directory here:")
        for r in h.missing_locally:
            click.echo(f"  {r.migration_name}")
    if h.up_to_date:
        click.echo("\nDatabase schema is up to date!")
