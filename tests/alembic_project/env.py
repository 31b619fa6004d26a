"""Alembic environment of the example project, set up for onlineschema.

Two things differ from the env.py that `alembic init` writes (both marked "onlineschema"):
transaction_per_migration=True, and the onlineschema settings passed to configure().
"""

from logging.config import fileConfig

from alembic import context
from knobs import server_version_from_env, settings_from_env
from sqlalchemy import engine_from_config, pool

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = None


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,  # onlineschema: one transaction per revision
        onlineschema_settings=settings_from_env(),  # onlineschema: timeouts in the script
        onlineschema_server_version=server_version_from_env(),  # onlineschema: default 18
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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,  # onlineschema: one transaction per revision
            onlineschema_settings=settings_from_env(),  # onlineschema: lock timeout, retries
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
