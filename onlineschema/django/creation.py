"""Test databases are created with plain DDL: the database is new and nobody uses it."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresDatabaseCreation

from .conf import read_settings

__all__ = ["DatabaseCreation", "OnlineDatabaseCreationMixin"]


class OnlineDatabaseCreationMixin:
    """While ``manage.py test`` creates and migrates the test database, the schema editor
    behaves like Django's (unless ``"online_test_databases": True``)."""

    connection: Any

    def create_test_db(self, *args: Any, **kwargs: Any) -> Any:
        conf = read_settings(self.connection.settings_dict, self.connection.alias)
        before = getattr(self.connection, "onlineschema_plain", False)
        self.connection.onlineschema_plain = not conf.online_test_databases
        try:
            return super().create_test_db(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.connection.onlineschema_plain = before


class DatabaseCreation(OnlineDatabaseCreationMixin, PostgresDatabaseCreation):  # type: ignore[misc]
    pass
