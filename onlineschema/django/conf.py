"""onlineschema's settings for a Django database: ``DATABASES[alias]["ONLINESCHEMA"]``.

Every key is optional::

    DATABASES = {
        "default": {
            "ENGINE": "onlineschema.django",
            "NAME": "shop", ...,
            "ONLINESCHEMA": {
                "lock_timeout": "500ms",        # how long a step may block the application
                "statement_timeout": "10s",     # for brief catalog-only steps
                "index_lock_timeout": "60s",    # CREATE INDEX CONCURRENTLY's waits
                "long_transaction": None,       # wait out sessions older than this first
                "retry": {"max_attempts": 30, "max_wait": "10min"},
                "backfill": {"batch_initial": 1000, "duty_cycle": 0.5},
                "workers": 1,                   # parallel backfill workers
                "state_schema": "onlineschema",
                "contract": "later",            # or "immediately" (see below)
                "online_test_databases": False, # manage.py test: plain DDL on the new DB
                "plain_fresh_database": True,   # see below
            },
        }
    }

``contract``: a migration that renames, retypes or drops a column or drops a table
leaves the old shape in place for the code still running (its expand phase runs, the
migration is recorded, ``onlineschema contract django:<app>.<migration>`` finishes it
once no running code uses the old shape). ``"immediately"`` runs the contract phase
within ``migrate`` too, for deploys that stop the old code first.

``plain_fresh_database``: a ``migrate`` that starts on a database where no migration
was ever applied (``django_migrations`` absent or empty: a new development, CI or
staging database) runs all its migrations as Django would, with plain DDL: nothing can
be using a schema that was never migrated. ``False`` plans those online too.

The settings live beside ``OPTIONS`` (which Django hands to the driver) so that the
driver never sees them. Bad keys or values are refused before any DDL runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from ..backfill import BackfillSettings
from ..errors import Refused
from ..executor import Settings, parse_duration
from ..locks import RetryPolicy

__all__ = ["SETTINGS_KEY", "DjangoSettings", "read_settings"]

#: the key of a ``DATABASES`` entry that holds onlineschema's settings
SETTINGS_KEY = "ONLINESCHEMA"

_DURATIONS = ("lock_timeout", "statement_timeout", "index_lock_timeout", "long_transaction")
_RETRY_DURATIONS = ("max_wait", "backoff_initial", "backoff_max")
_KNOWN = (
    *_DURATIONS,
    "retry",
    "backfill",
    "workers",
    "state_schema",
    "online_test_databases",
    "plain_fresh_database",
    "contract",
)
_CONTRACT = ("later", "immediately")


@dataclass(frozen=True)
class DjangoSettings:
    """What the Django backend runs with: the executor's settings and its own."""

    executor: Settings = dataclasses.field(default_factory=Settings)
    #: parallel backfill workers per migration
    workers: int = 1
    #: run migrations online also when ``manage.py test`` creates the test database
    online_test_databases: bool = False
    #: "later": breaking contract steps wait for ``onlineschema contract``;
    #: "immediately": ``migrate`` runs them too
    contract: str = "later"
    #: a migrate on a database where nothing was ever applied runs plain DDL
    plain_fresh_database: bool = True


def read_settings(settings_dict: dict[str, Any], alias: str) -> DjangoSettings:
    """Read ``settings_dict[SETTINGS_KEY]``; raise :class:`Refused` on a bad key or value."""
    raw = settings_dict.get(SETTINGS_KEY) or {}
    if not isinstance(raw, dict):
        raise Refused(
            f'DATABASES[{alias!r}]["{SETTINGS_KEY}"] is {type(raw).__name__}, not a dict',
            'give a dict, e.g. {"lock_timeout": "500ms"}',
        )
    unknown = sorted(set(raw) - set(_KNOWN))
    if unknown:
        raise Refused(
            f'unknown key(s) in DATABASES[{alias!r}]["{SETTINGS_KEY}"]: {", ".join(unknown)}',
            "known keys: " + ", ".join(_KNOWN),
        )
    s = Settings()
    try:
        durations: dict[str, Any] = {
            key: parse_duration(raw[key])
            for key in _DURATIONS
            if key in raw and not (key == "long_transaction" and raw[key] is None)
        }
        s = replace(s, **durations)
        if "state_schema" in raw:
            s = replace(s, state_schema=str(raw["state_schema"]))
        retry = raw.get("retry") or {}
        bad = sorted(set(retry) - {f.name for f in dataclasses.fields(RetryPolicy)})
        if bad:
            raise ValueError(
                f"unknown retry key(s) {', '.join(bad)} (known: max_attempts,"
                f" {', '.join(_RETRY_DURATIONS)})"
            )
        policy: dict[str, Any] = {
            key: int(value) if key == "max_attempts" else parse_duration(value)
            for key, value in retry.items()
        }
        s = replace(s, retry=replace(s.retry, **policy))
        backfill = raw.get("backfill") or {}
        bad = sorted(set(backfill) - {f.name for f in dataclasses.fields(BackfillSettings)})
        if bad:
            raise ValueError(f"unknown backfill key(s) {', '.join(bad)}")
        s = replace(s, backfill=s.backfill.with_overrides(backfill))
        workers = int(raw.get("workers", 1))
        if workers < 1:
            raise ValueError("workers must be 1 or more")
        contract = str(raw.get("contract", "later"))
        if contract not in _CONTRACT:
            raise ValueError(f"contract must be one of {', '.join(_CONTRACT)}, not {contract!r}")
    except (ValueError, TypeError) as exc:
        raise Refused(
            f'bad value in DATABASES[{alias!r}]["{SETTINGS_KEY}"]: {exc}',
            "durations are numbers of seconds or strings like '500ms', '2s', '1min';"
            " see docs/django.md for every key",
        ) from None
    return DjangoSettings(
        executor=s,
        workers=workers,
        online_test_databases=bool(raw.get("online_test_databases", False)),
        contract=contract,
        plain_fresh_database=bool(raw.get("plain_fresh_database", True)),
    )
