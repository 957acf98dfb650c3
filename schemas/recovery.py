"""Putting jobs back in the queue: dead workers, preempted jobs, transient errors, database outages.

DataJoint's job table leaves a killed worker's job ``reserved`` forever and marks a preempted
one ``error``. Here a job goes back to ``pending`` (and later resumes from its checkpoint) when

- its worker's heartbeat is older than the grace period (:func:`sweep`, run by every live worker);
- it was stopped by SIGTERM/SIGINT (:func:`hand_back`; :func:`sweep` also catches the rows a
  worker could not hand back itself);
- it failed with a transient error (lost database connection, a deadlock with another worker,
  CUDA out of memory) and its retry
  budget, ``$V1FABRIK_TRANSIENT_RETRIES`` (default 3), is not spent (:func:`retry_transient`).

Errors from bad configs or data stay ``error``: retrying cannot fix them.
"""
import datetime
import logging
import os
import time

import datajoint as dj
import torch

from .connection import DatabaseUnavailable
from .envsettings import seconds
from .hashing import config_hash
from .heartbeat import LiveWorker, own_id
from .upsert import replace1

logger = logging.getLogger(__name__)

RETRIES_ENV = "V1FABRIK_TRANSIENT_RETRIES"
DEFAULT_RETRIES = 3
DB_WAIT_ENV = "V1FABRIK_DB_WAIT_S"
DEFAULT_DB_WAIT_S = 600.0
CHECKPOINT_ENV = "V1FABRIK_CHECKPOINT_EVERY_S"
DEFAULT_CHECKPOINT_EVERY_S = 30.0
# Job error messages (DataJoint writes "<ExceptionName>: <message>") of jobs stopped by a signal.
PREEMPTED_MESSAGES = ("Preempted:%", "SystemExit: SIGTERM received")
# Client error codes of MySQL/MariaDB for a server that is gone or unreachable.
MYSQL_CONNECTION_CODES = {2003, 2006, 2013, 2055}
# A statement that lost a lock race with another worker (deadlock, lock wait timeout): MySQL/MariaDB
# error codes and PostgreSQL SQLSTATEs (serialization_failure, deadlock_detected, lock_not_available).
MYSQL_LOCK_CODES = {1205, 1213}
POSTGRES_LOCK_STATES = {"40001", "40P01", "55P03"}


class TransientFailure(dj.Manual):
    definition = """
    # transient failures retried automatically, counted per job
    table_name : varchar(64)      # the computed table, e.g. TrainedModel
    job_hash : char(32)           # schemas.hashing.config_hash of the job's primary key
    ---
    attempts : int32
    last_error : varchar(2047)
    """


def is_connection_error(error: BaseException) -> bool:
    """True for a lost or refused database connection, from DataJoint or the MySQL/PostgreSQL driver."""
    if isinstance(error, (dj.errors.LostConnectionError, ConnectionError)):
        return True
    module = type(error).__module__ or ""
    if module.startswith("pymysql") and type(error).__name__ in ("OperationalError", "InterfaceError"):
        return not error.args or error.args[0] in MYSQL_CONNECTION_CODES
    return module.startswith("psycopg") and type(error).__name__ in ("OperationalError", "InterfaceError")


def is_lock_conflict(error: BaseException) -> bool:
    """True when the server rolled the statement back because it lost a lock race; running it again is safe."""
    if (type(error).__module__ or "").startswith("pymysql"):
        return bool(error.args) and error.args[0] in MYSQL_LOCK_CODES
    return getattr(error, "pgcode", None) in POSTGRES_LOCK_STATES


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: a lost database connection, a lost lock race or CUDA running out of memory."""
    return is_connection_error(error) or is_lock_conflict(error) or isinstance(error, torch.OutOfMemoryError)


def _computed() -> tuple:
    from .tables import COMPUTED

    return COMPUTED


def job_tables() -> dict:
    """``{name: full name of its job table}`` of the computed tables; call from the main thread."""
    return {table.__name__: table.jobs.full_table_name for table in _computed()}


def _repend(connection, job_table: str, where: str, args=()) -> int:
    """Set the matching jobs of ``job_table`` back to pending; returns how many."""
    q = connection.adapter.quote_identifier
    cleared = ", ".join(f"{q(c)}={v}" for c, v in (
        ("status", "'pending'"), ("reserved_time", "NULL"), ("completed_time", "NULL"), ("error_message", "''"),
        ("error_stack", "NULL"), ("host", "''"), ("pid", "0"), ("connection_id", "0")))
    return connection.query(f"UPDATE {job_table} SET {cleared} WHERE {where}", args=args).rowcount


def sweep(connection, grace_s: float, jobs: dict) -> int:
    """Re-pend the jobs of workers silent for more than ``grace_s`` and of preempted jobs; returns how many.

    Args:
        connection: the caller's own connection (the heartbeat thread's).
        jobs: ``{table name: job table}`` from :func:`job_tables`.
    """
    q = connection.adapter.quote_identifier
    workers = LiveWorker.full_table_name
    cutoff = connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0] - datetime.timedelta(seconds=grace_s)
    dead = connection.query(f"SELECT {q('host')}, {q('pid')} FROM {workers} WHERE {q('last_beat')} < %s",
                            args=(cutoff,)).fetchall()
    count = 0
    for host, pid in dead:
        # Whoever deletes the row first recovers that worker's jobs; a beat in between keeps it alive.
        gone = connection.query(f"DELETE FROM {workers} WHERE {q('host')}=%s AND {q('pid')}=%s AND {q('last_beat')} < %s",
                                args=(host, pid, cutoff)).rowcount
        if not gone:
            continue
        for name, job_table in jobs.items():
            n = _repend(connection, job_table, f"{q('status')}='reserved' AND {q('host')}=%s AND {q('pid')}=%s",
                        (host, pid))
            if n:
                logger.warning("worker %s:%s has not beaten for %g s: %d %s job(s) back to pending",
                               host, pid, grace_s, n, name)
            count += n
    preempted = " OR ".join(f"{q('error_message')} LIKE %s" for _ in PREEMPTED_MESSAGES)
    for job_table in jobs.values():
        count += _repend(connection, job_table, f"{q('status')}='error' AND ({preempted})", PREEMPTED_MESSAGES)
    return count


def stale_reservations(interval_s: float) -> list:
    """Reserved jobs whose registered worker missed its last two beats: ``[(table, key, host, pid, last beat)]``."""
    cutoff = dj.conn().query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0] - datetime.timedelta(seconds=2 * interval_s)
    silent = {(w["host"], w["pid"]): w["last_beat"] for w in (LiveWorker & f"last_beat < '{cutoff}'").to_dicts()}
    found = []
    for table in _computed():
        for job in table.jobs.reserved.to_dicts():
            if (job["host"], job["pid"]) in silent:
                key = {k: job[k] for k in table.primary_key}
                found.append((table.__name__, key, job["host"], job["pid"], silent[job["host"], job["pid"]]))
    return found


def release_own() -> int:
    """Re-pend the jobs reserved under this process's host and pid (after a lost connection, or a reused pid)."""
    connection = dj.conn()
    q = connection.adapter.quote_identifier
    return sum(_repend(connection, job_table, f"{q('status')}='reserved' AND {q('host')}=%s AND {q('pid')}=%s",
                       tuple(own_id().values()))
               for job_table in job_tables().values())


def hand_back(table, key) -> None:
    """Put the job ``key`` of ``table``, just marked error by a preemption, back to pending."""
    connection = table.connection
    q = connection.adapter.quote_identifier
    where = " AND ".join(f"{q(k)}=%s" for k in table.primary_key)
    _repend(connection, table.jobs.full_table_name, f"{where} AND {q('status')}='error'",
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


class CheckpointSchedule:
    """When a job writes its checkpoint: after its first epoch, then at most every
    ``$V1FABRIK_CHECKPOINT_EVERY_S`` seconds (default 30; 0 means every epoch), and always once the
    worker is asked to stop. On a fast GPU this keeps the 4 MiB write out of most epochs; a killed job
    loses at most that interval plus one epoch.
    """

    def __init__(self, clock=time.monotonic):
        self.every_s = seconds(CHECKPOINT_ENV, DEFAULT_CHECKPOINT_EVERY_S)
        self.clock = clock
        self.last_written = None

    def due(self, stopping: bool = False) -> bool:
        return stopping or self.last_written is None or self.clock() - self.last_written >= self.every_s

    def written(self) -> None:
        self.last_written = self.clock()


def write_checkpoint(table, row) -> bool:
    """Replace the key's checkpoint row (one atomic statement); on a lost database, warn and go on training."""
    try:
        replace1(table, row)
        return True
    except Exception as error:
        if not is_connection_error(error):
            raise
        logger.warning("checkpoint of epoch %s not written, the database is unreachable (%s); training goes on",
                       row.get("epoch"), type(error).__name__)
        return False


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
