"""Putting a job back in the queue: preempted jobs, transient errors, database outages.

DataJoint's job table marks a preempted job ``error``. Here a job goes back to ``pending`` (and
later resumes from its checkpoint) when

- it was stopped by SIGTERM/SIGINT (:func:`hand_back`; :mod:`.sweep` also catches the rows a worker
  could not hand back itself, and the jobs of dead workers);
- it failed with a transient error (lost database connection, a deadlock with another worker,
  CUDA out of memory) and its retry budget, ``$V1FABRIK_TRANSIENT_RETRIES`` (default 3), is not
  spent (:func:`retry_transient`);
- this process lost the database and got it back (:func:`release_own`).

Errors from bad configs or data stay ``error``: retrying cannot fix them.
"""
import logging
import os
import time

import datajoint as dj
import torch

from ..server.connection import DatabaseUnavailable, is_connection_error, is_lock_conflict
from ..server.sql import replace1
from ..tables import COMPUTED
from ..tables.hashing import config_hash
from ..tables.jobtable import own_id
from ..tables.workers import TransientFailure
from .settings import seconds

logger = logging.getLogger(__name__)

RETRIES_ENV = "V1FABRIK_TRANSIENT_RETRIES"
DEFAULT_RETRIES = 3
DB_WAIT_ENV = "V1FABRIK_DB_WAIT_S"
DEFAULT_DB_WAIT_S = 600.0


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: a lost database connection, a lost lock race or CUDA running out of memory."""
    return is_connection_error(error) or is_lock_conflict(error) or isinstance(error, torch.OutOfMemoryError)


def job_tables() -> dict:
    """``{name: full name of its job table}`` of the computed tables; call from the main thread."""
    return {table.__name__: table.jobs.full_table_name for table in COMPUTED}


def repend(connection, job_table: str, where: str, args=()) -> int:
    """Set the matching jobs of ``job_table`` back to pending; returns how many."""
    q = connection.adapter.quote_identifier
    cleared = ", ".join(f"{q(c)}={v}" for c, v in (
        ("status", "'pending'"), ("reserved_time", "NULL"), ("completed_time", "NULL"), ("error_message", "''"),
        ("error_stack", "NULL"), ("host", "''"), ("pid", "0"), ("connection_id", "0")))
    return connection.query(f"UPDATE {job_table} SET {cleared} WHERE {where}", args=args).rowcount


def release_own() -> int:
    """Re-pend the jobs reserved under this process's host and pid (after a lost connection, or a reused pid)."""
    connection = dj.conn()
    q = connection.adapter.quote_identifier
    return sum(repend(connection, job_table, f"{q('status')}='reserved' AND {q('host')}=%s AND {q('pid')}=%s",
                      tuple(own_id().values()))
               for job_table in job_tables().values())


def hand_back(table, key) -> None:
    """Put the job ``key`` of ``table``, just marked error by a preemption, back to pending."""
    connection = table.connection
    q = connection.adapter.quote_identifier
    where = " AND ".join(f"{q(k)}=%s" for k in table.primary_key)
    repend(connection, table.jobs.full_table_name, f"{where} AND {q('status')}='error'",
           tuple(key[k] for k in table.primary_key))
    logger.warning("%s job %s handed back: it resumes from its last checkpoint", table.__name__, key)


def retry_budget() -> int:
    """How many times a job is retried after transient errors."""
    value = os.environ.get(RETRIES_ENV, "")
    if value and not value.isdigit():
        raise ValueError(f"{RETRIES_ENV}={value!r} is not a non-negative whole number")
    return int(value) if value else DEFAULT_RETRIES


def retry_transient(table, key, error: BaseException) -> bool:
    """Re-pend a job that failed transiently if its budget allows; True when it will run again."""
    ident = {"table_name": table.__name__, "job_hash": config_hash(dict(key))}
    attempts = (TransientFailure & ident).to_arrays("attempts")
    attempts = int(attempts[0]) + 1 if len(attempts) else 1
    if attempts > retry_budget():
        logger.error("%s job %s failed transiently %d times; left as error", table.__name__, key, attempts - 1)
        return False
    replace1(TransientFailure, {**ident, "attempts": attempts, "last_error": f"{type(error).__name__}: {error}"[:2047]})
    hand_back(table, key)
    logger.warning("retry %d of %d after %s", attempts, retry_budget(), type(error).__name__)
    return True


def db_wait_s() -> float:
    return seconds(DB_WAIT_ENV, DEFAULT_DB_WAIT_S)


def wait_for_database() -> None:
    """Block until the database answers again (up to ``$V1FABRIK_DB_WAIT_S``, default 600 s)."""
    deadline, delay = time.monotonic() + db_wait_s(), 0.5
    while True:
        try:
            dj.conn().query("SELECT 1")
            return
        except Exception as error:
            if not is_connection_error(error):
                raise
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(f"the database did not come back within {db_wait_s():g} s "
                                          f"({type(error).__name__}); the job resumes from its checkpoint later") from None
            logger.warning("database unreachable (%s); retrying in %.1f s", type(error).__name__, delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
