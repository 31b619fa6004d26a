"""Backfill settings given when a migration starts (``apply``, ``resume``, ``backfill``).

The same ``key=value`` words as ``onlineschema set`` (``batch_target=50ms``,
``duty_cycle=80%``, ``vacuum=off``), from three places, later ones winning:

1. a settings file: ``--settings-file PATH`` or ``ONLINESCHEMA_SETTINGS_FILE``; TOML with
   the keys at the top level, in a ``[backfill]`` table, or in
   ``[tool.onlineschema.backfill]`` (so ``pyproject.toml`` works);
2. the environment: ``ONLINESCHEMA_SET="batch_target=50ms,duty_cycle=80%"`` (pairs
   separated by commas or whitespace);
3. the command line: ``--set KEY=VALUE`` (``--setting`` on ``backfill``, whose ``--set``
   is the UPDATE's assignment), repeated.

Unknown keys and bad values are refused before anything runs (exit 2), naming where the
setting came from. The result is the run's ``Settings.backfill``: a live ``onlineschema
set`` made while it runs still changes it; one stored before it started does not
override what the start gave (see ``Coordinator.control``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click

from ..backfill import BackfillSettings
from ..errors import Refused
from ..executor import Settings, parse_duration

ENV_SET = "ONLINESCHEMA_SET"
ENV_FILE = "ONLINESCHEMA_SETTINGS_FILE"
_META = "onlineschema.start_settings"


def setting_value(key: str, value: str) -> str:
    """Turn ``300ms`` into seconds for duration settings and ``50%`` into ``0.5``."""
    default = getattr(BackfillSettings(), key, None)
    if not isinstance(default, float):
        return value
    if value.endswith("%"):
        with contextlib.suppress(ValueError):
            return repr(float(value[:-1]) / 100)
    if re.search(r"[a-z]$", value):
        with contextlib.suppress(ValueError):
            return repr(parse_duration(value))
    return value


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["batch_target=50ms", ...]`` -> ``{"batch_target": "0.05", ...}``; raises
    ValueError naming the first word that is not ``key=value``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        out[key.strip()] = setting_value(key.strip(), value.strip())
    return out


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The backfill settings of a TOML file (top level, ``[backfill]`` or
    ``[tool.onlineschema.backfill]``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise Refused(
            f"cannot read the settings file {path}: {exc.strerror or exc}",
            f"check the path given with --settings-file or {ENV_FILE}",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise Refused(
            f"the settings file {path} is not valid TOML: {exc}",
            'write one setting a line, e.g. batch_target = "50ms"',
        ) from None
    table: Any = data.get("tool", {}).get("onlineschema", {}).get("backfill")
    if table is None:
        table = data.get("backfill", data)
    if not isinstance(table, dict):
        raise Refused(
            f"the settings file {path}: [backfill] is not a table",
            "write [backfill] followed by key = value lines",
        )
    return {
        k: setting_value(k, v) if isinstance(v, str) else v
        for k, v in table.items()
        if not isinstance(v, dict)  # other tables (e.g. [tool.other]) are not ours
    }


def _check(settings: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in fields(BackfillSettings)}
    bad = sorted(set(settings) - known)
    if bad:
        raise Refused(
            f"unknown backfill setting(s) in {where}: {', '.join(bad)}",
            "known: " + ", ".join(sorted(known)),
        )
    try:
        BackfillSettings().with_overrides(dict(settings))
    except ValueError as exc:
        raise Refused(
            f"bad backfill setting in {where}: {exc}",
            "durations take units (50ms, 2s), shares a fraction or a percentage (0.8, 80%);"
            " see `onlineschema set --help`",
        ) from None


def start_settings(
    pairs: Iterable[str] = (),
    settings_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The backfill settings a run starts with: file < environment < ``pairs``;
    Refused (exit 2) on an unknown key or a bad value."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = settings_file or env.get(ENV_FILE) or None
    if path:
        from_file = read_settings_file(path)
        _check(from_file, f"the settings file {path}")
        merged.update(from_file)
    text = env.get(ENV_SET, "").strip()
    if text:
        try:
            from_env = parse_pairs(w for w in re.split(r"[,\s]+", text) if w)
        except ValueError as exc:
            raise Refused(
                f"{ENV_SET}: {exc}", f'write {ENV_SET}="batch_target=50ms,duty_cycle=80%"'
            ) from None
        _check(from_env, ENV_SET)
        merged.update(from_env)
    try:
        from_cli = parse_pairs(pairs)
    except ValueError as exc:
        raise Refused(
            f"--set: {exc}", "write --set KEY=VALUE, e.g. --set batch_target=50ms"
        ) from None
    _check(from_cli, "--set")
    merged.update(from_cli)
    return merged


def start_settings_options(
    *names: str,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--set KEY=VALUE`` (under ``names``) and ``--settings-file`` options of a
    command that starts a migration; the settings they give (with the environment's) are
    read before the command runs and applied by ``with_start_settings``."""
    names = names or ("--set", "--setting")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            pairs = kwargs.pop("start_pairs", ())
            path = kwargs.pop("settings_file", None)
            ctx = click.get_current_context()
            ctx.meta[_META] = start_settings(pairs, path)
            return f(*args, **kwargs)

        wrapper = click.option(
            "--settings-file",
            "settings_file",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="PATH",
            help=f"Backfill settings from a TOML file (also {ENV_FILE}).",
        )(wrapper)
        return click.option(
            *names,
            "start_pairs",
            multiple=True,
            metavar="KEY=VALUE",
            help="A backfill setting for this run, as for `onlineschema set`"
            f" (e.g. batch_target=50ms, duty_cycle=80%); also {ENV_SET}. Repeat for more.",
        )(wrapper)

    return decorate


def with_start_settings(s: Settings) -> Settings:
    """``s`` with the backfill settings the current command was started with."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_META) if ctx is not None else None
    if not given:
        return s
    return replace(s, backfill=s.backfill.with_overrides(given))
