"""Alembic environment of the example project, running ordinary revisions online.

The only change from the env.py that `alembic init` writes: ``configure(context, ...)``
from onlineschema.alembic instead of ``context.configure(...)`` (marked "onlineschema").
"""

from logging.config import fileConfig

from alembic import context
from knobs import server_version_from_env, settings_from_env
from models import metadata
from sqlalchemy import engine_from_config, pool

from onlineschema.alembic import configure

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = metadata


def run_migrations_offline() -> None:
    configure(  # onlineschema: was context.configure(
        context,
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        settings=settings_from_env(),
        server_version=server_version_from_env(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        configure(  # onlineschema: was context.configure(
            context,
            connection=connection,
            target_metadata=target_metadata,
            settings=settings_from_env(),
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
