"""``DATABASES = {"default": {"ENGINE": "onlineschema.django", ...}}``: Django's
PostgreSQL backend whose schema editor runs migrations online."""

from __future__ import annotations

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper

from .creation import DatabaseCreation
from .schema import DatabaseSchemaEditor

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(PostgresDatabaseWrapper):  # type: ignore[misc]
    SchemaEditorClass = DatabaseSchemaEditor
    creation_class = DatabaseCreation
