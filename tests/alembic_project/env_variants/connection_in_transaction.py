"""Misconfigured on purpose: the connection is opened with engine.begin(), so it is
already inside a transaction when context.configure() runs. onlineschema must refuse
before any DDL."""

from logging.config import fileConfig

from alembic import context
from knobs import settings_from_env
from sqlalchemy import engine_from_config, pool

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=None,
            transaction_per_migration=True,
            onlineschema_settings=settings_from_env(),
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
