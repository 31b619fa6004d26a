"""Django database backend: ``manage.py migrate`` runs ordinary migrations online.

Set the engine and keep everything else (``OPTIONS`` included) as for Django's
PostgreSQL backend::

    DATABASES = {
        "default": {
            "ENGINE": "onlineschema.django",
            "NAME": "shop",
            # ... USER, PASSWORD, HOST, PORT, OPTIONS as before
            "ONLINESCHEMA": {"lock_timeout": "500ms"},  # optional, see conf.py
        }
    }

Each migration is planned and run as the onlineschema migration
``django:<app>.<migration>`` (see :mod:`onlineschema.django.schema`); ``sqlmigrate``
prints the online plan. To compose with another PostgreSQL backend (PostGIS), mix
:class:`~onlineschema.django.schema.OnlineSchemaEditorMixin` into its schema editor and
:class:`~onlineschema.django.creation.OnlineDatabaseCreationMixin` into its creation
class. See docs/django.md.
"""
