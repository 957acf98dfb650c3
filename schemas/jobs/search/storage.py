"""Optuna's RDB storage in the tables' own database server, in the schema ``<prefix>optuna``.

The URL is built from DataJoint's connection settings (``mysql+pymysql://`` for MySQL and MariaDB,
``postgresql+psycopg2://`` with the schema as ``search_path`` for PostgreSQL), so every worker finds
the studies where it finds the tables. ``optuna-dashboard <storage URL>`` shows them.
"""
import functools
import logging

import datajoint as dj
import optuna
from sqlalchemy.engine import URL

from ...server.connection import settings

logger = logging.getLogger(__name__)

DRIVERS = {"mysql": "mysql+pymysql", "postgresql": "postgresql+psycopg2"}


class StorageUnavailable(ConnectionError):
    """The Optuna storage cannot be opened."""


def schema_name(prefix: str) -> str:
    """The schema (MySQL database) of the Optuna tables for ``prefix``."""
    return f"{prefix}optuna"


def storage_url(prefix: str, hide_password: bool = True) -> str:
    """The SQLAlchemy URL of the Optuna storage of ``prefix`` (the password shown as ``***`` unless asked)."""
    target = settings()
    schema = schema_name(prefix)
    if target["backend"] == "postgresql":
        database = dj.config.get("database.name") or "postgres"
        query = {"options": f"-csearch_path={schema}"}
    else:
        database, query = schema, {"charset": "utf8mb4"}
    url = URL.create(DRIVERS[target["backend"]], username=target["user"], password=dj.config["database.password"],
                     host=target["host"], port=target["port"], database=database, query=query)
    return url.render_as_string(hide_password=hide_password)


def create_schema(prefix: str) -> None:
    """Create the storage's schema on the server if it is missing."""
    connection = dj.conn()
    quoted = connection.adapter.quote_identifier(schema_name(prefix))
    if connection.adapter.backend == "postgresql":
        connection.query(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
    else:
        connection.query(f"CREATE DATABASE IF NOT EXISTS {quoted}")


@functools.lru_cache(maxsize=4)
def open_storage(prefix: str) -> optuna.storages.RDBStorage:
    """The Optuna storage of ``prefix`` (one per process); StorageUnavailable, in one sentence, when it cannot open."""
    try:
        return optuna.storages.RDBStorage(storage_url(prefix, hide_password=False),
                                          engine_kwargs={"pool_pre_ping": True, "pool_recycle": 3600})
    except Exception as error:  # SQLAlchemy and the drivers share no base class
        reason = " ".join(str(error).split())[:200]
        raise StorageUnavailable(f"cannot open the Optuna storage {storage_url(prefix)} ({reason}); "
                                 "is the database server up and does this account have its schema?") from None
