"""Bind every v1fabrik table to the schema ``<prefix>fabrik``, race-free across workers.

DataJoint's first-time declaration is racy when several processes declare the same tables at
once, so :func:`bind` declares the tables and their job tables while holding a server-side
named lock (``GET_LOCK`` on MySQL/MariaDB, an advisory lock on PostgreSQL).
"""
import contextlib
import logging
import re
import zlib

import datajoint as dj

from .heartbeat import LiveWorker
from .recipes import Dataset, Experiment, Fabrikant, Model, Seed, Trainer
from .recovery import TransientFailure
from .scoring import SCORE_TABLES
from .trained import Checkpoint, TrainedModel

logger = logging.getLogger(__name__)


class _JobTableSeedWarning(logging.Filter):
    """Drop DataJoint 2.3.5's spurious warning about ``seed``: job tables re-declare the ``int32`` key as
    ``int`` (``integer`` on PostgreSQL)."""

    def filter(self, record):
        return not re.match(r"Native type '(int|integer)' is used in attribute 'seed'", record.getMessage())


logging.getLogger("datajoint").addFilter(_JobTableSeedWarning())

TABLES = (Fabrikant, Seed, Dataset, Model, Trainer, Experiment, TrainedModel, Checkpoint, *SCORE_TABLES,
          LiveWorker, TransientFailure)
COMPUTED = (TrainedModel, *SCORE_TABLES)
LOCK_TIMEOUT_S = 120


class DeclarationLockTimeout(TimeoutError):
    """Another process held the declaration lock for too long."""


@contextlib.contextmanager
def server_lock(name: str, timeout_s: int = LOCK_TIMEOUT_S):
    """Hold the database-wide named lock ``name`` for the duration of the block."""
    conn = dj.conn()
    if conn.adapter.backend == "postgresql":
        lock_id = zlib.crc32(name.encode())
        conn.query("SELECT pg_advisory_lock(%s)", args=(lock_id,))
        release = ("SELECT pg_advisory_unlock(%s)", (lock_id,))
    else:
        got = conn.query("SELECT GET_LOCK(%s, %s)", args=(name, timeout_s)).fetchone()[0]
        if got != 1:
            raise DeclarationLockTimeout(f"waited {timeout_s} s for the database lock {name!r}; is another init stuck?")
        release = ("SELECT RELEASE_LOCK(%s)", (name,))
    try:
        yield
    finally:
        conn.query(release[0], args=release[1])


def bind(prefix: str) -> dict:
    """Declare the tables and job tables in ``<prefix>fabrik``; returns {class name: bound class}."""
    name = f"{prefix}fabrik"
    with server_lock(f"v1fabrik:{name}"[:64]):
        schema = dj.Schema(name, context={t.__name__: t for t in TABLES})
        for table in TABLES:
            schema(table)
        for table in COMPUTED:
            if not table.jobs.is_declared:
                table.jobs.declare()
    logger.debug("bound schema %s", name)
    return {t.__name__: t for t in TABLES}
