"""Command-line options for operating long runs: ``--metrics-port``,
``--metrics-textfile`` and ``--hook`` on the commands that run a migration,
``status --watch``, and the ``verify`` command.

The options are added by decorators (:func:`run_options`, :func:`watch_option`) so that
the commands themselves do not change: they install the metrics and hooks as ambient
observers (:func:`onlineschema.observe.ambient`) around the command's body.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
import structlog

from ..observe import ambient
from ..observe.hooks import EVENTS, HookRunner, parse_hook

log = structlog.stdlib.get_logger("onlineschema.cli")


def _hook_param(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> list[str]:
    for v in value or ():
        try:
            parse_hook(v)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return list(value or ())


@contextlib.contextmanager
def observing(
    metrics_port: int | None,
    metrics_textfile: str | None,
    hooks: Sequence[str],
    hook_timeout: float = 10.0,
) -> Iterator[None]:
    """Metrics (HTTP and/or textfile) and hooks for the migrations run inside."""
    observers: list[Any] = []
    metrics = None
    if metrics_port is not None or metrics_textfile:
        from ..observe.metrics import MetricsObserver

        metrics = MetricsObserver()
        if metrics_port is not None:
            metrics.serve(metrics_port)
        if metrics_textfile:
            metrics.start_textfile(metrics_textfile)
        observers.append(metrics)
    runner = None
    if hooks:
        table: dict[str, list[str]] = {}
        for h in hooks:
            event, command = parse_hook(h)
            table.setdefault(event, []).append(command)
        runner = HookRunner(table, timeout=hook_timeout)
        observers.append(runner)
    try:
        with ambient(*observers):
            yield
    finally:
        if runner is not None:
            runner.close()
        if metrics is not None:
            metrics.close()


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics-port``, ``--metrics-textfile``, ``--hook``, ``--hook-timeout``."""

    @functools.wraps(f)
    def command(
        *args: Any,
        metrics_port: int | None,
        metrics_textfile: str | None,
        hooks: Sequence[str],
        hook_timeout: float,
        **kwargs: Any,
    ) -> Any:
        with observing(metrics_port, metrics_textfile, hooks, hook_timeout):
            return f(*args, **kwargs)

    from .common import DURATION

    options = [
        click.option(
            "--metrics-port",
            type=click.IntRange(0, 65535),
            default=None,
            metavar="PORT",
            help="Serve Prometheus metrics on this port while the command runs"
            " (pip install 'onlineschema[metrics]').",
        ),
        click.option(
            "--metrics-textfile",
            type=click.Path(dir_okay=False, writable=True),
            default=None,
            metavar="PATH",
            help="Rewrite Prometheus metrics to PATH (atomically, every 5s and at the end),"
            " for node_exporter's textfile collector.",
        ),
        click.option(
            "--hook",
            "hooks",
            multiple=True,
            callback=_hook_param,
            metavar="EVENT=COMMAND",
            help="Run COMMAND (a shell command; facts in ONLINESCHEMA_* environment"
            f" variables) on EVENT: {', '.join(EVENTS)}. Repeatable.",
        ),
        click.option(
            "--hook-timeout",
            type=DURATION,
            default=10.0,
            show_default=True,
            metavar="DURATION",
            help="A hook running longer is killed (and logged); the migration never waits.",
        ),
    ]
    out: Callable[..., Any] = command
    for opt in options:
        out = opt(out)
    return out


def watch_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``status NAME --watch [--interval DURATION]``: the live view instead of one table."""

    @functools.wraps(f)
    def command(*args: Any, watch: bool, interval: float, **kwargs: Any) -> Any:
        if not watch:
            return f(*args, **kwargs)
        name = kwargs.get("name")
        if not name:
            raise click.UsageError("--watch needs the NAME of a migration")
        if kwargs.get("fmt") not in (None, "text"):
            raise click.UsageError("--watch draws text; leave out --format json")
        opts = click.get_current_context().obj
        return run_watch(opts, kwargs.get("dsn"), name, interval)

    from .common import DURATION

    out: Callable[..., Any] = click.option(
        "--interval",
        type=DURATION,
        default=1.0,
        show_default=True,
        metavar="DURATION",
        help="With --watch: how often to read the database again.",
    )(command)
    out = click.option(
        "--watch",
        is_flag=True,
        help="Redraw the steps, backfill progress, rate, ETA, throttle and blockers until"
        " the migration ends (or Ctrl-C). Works from any machine that reaches the database.",
    )(out)
    return out


def run_watch(opts: Any, dsn: str | None, name: str, interval: float) -> int:
    from rich.console import Console

    from ..observe.watch import watch
    from .common import open_executor

    with open_executor(dsn, opts.settings()) as ex:
        ex.require(name)
        data = watch(ex, name, interval=interval, console=Console())
    click.echo(f"migration {name}: {data['state']}" if data else "stopped watching")
    return 0


@click.command()
@click.option(
    "--dsn",
    envvar=["ONLINESCHEMA_DSN", "DATABASE_URL"],
    show_envvar=True,
    metavar="DSN",
    help="Database of the migration.",
)
@click.argument("name")
@click.pass_obj
def verify(opts: Any, dsn: str | None, name: str) -> int:
    """Check that each column a type change or rename copied holds the old one converted.

    Reads every row in batches, under the backfill's throttle; exit 0 when all match,
    2 with sample keys and the fix when some do not. The contract phase runs the same
    check first (unless verify_before_contract is off).
    """
    from ..verify import refusal
    from ..verify import verify as run_verify
    from .common import open_executor

    with open_executor(dsn, opts.settings()) as ex:
        report = run_verify(ex, name)
    if not report.results:
        click.echo(f"migration {name}: no column copy to verify")
        return 0
    if not report.ok:
        raise refusal(report, before_contract=False)
    for r in report.results:
        c = r.copy
        click.echo(f"{c.qual}.{c.new}: {r.rows:,} row(s) match {c.forward} ({r.seconds:.1f}s)")
    click.echo(f"migration {name}: verified, every row matches")
    return 0


def register(group: click.Group) -> None:
    group.add_command(verify)
