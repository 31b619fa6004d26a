"""Settings of the test project: the database comes from the environment.

``DJANGO_TEST_DSN``: a libpq connection string; ``DJANGO_ENGINE``: the backend
(default ``onlineschema.django``); ``ONLINESCHEMA_DJANGO``: JSON for the
``ONLINESCHEMA`` settings of the database; ``DJANGO_EXTRA_APPS``: comma-separated apps
installed before ``shop``.
"""

import json
import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["DJANGO_TEST_DSN"])

SECRET_KEY = "test"
INSTALLED_APPS = [*filter(None, os.environ.get("DJANGO_EXTRA_APPS", "").split(",")), "shop"]
DATABASES = {
    "default": {
        "ENGINE": os.environ.get("DJANGO_ENGINE", "onlineschema.django"),
        "NAME": _db["dbname"],
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": str(_db.get("port", "")),
        "ONLINESCHEMA": json.loads(os.environ.get("ONLINESCHEMA_DJANGO", "{}")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
