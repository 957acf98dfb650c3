"""Worker registry and heartbeat: who is alive, so that dead workers' jobs can be taken over.

Each worker registers itself in ``LiveWorker`` (host and pid, as DataJoint writes them into a
reserved job row) and a background thread with its own database connection updates
``last_beat`` every ``$V1FABRIK_HEARTBEAT_S`` seconds (default 10), using the server's clock.
The same thread sweeps: a worker whose last beat is older than ``$V1FABRIK_GRACE_S`` (default
60) is dead, and its reserved jobs go back to pending (see :mod:`schemas.recovery`).
"""
import logging
import os
import platform
import threading

import datajoint as dj

from .envsettings import seconds
from .upsert import replace1

logger = logging.getLogger(__name__)

INTERVAL_ENV = "V1FABRIK_HEARTBEAT_S"
GRACE_ENV = "V1FABRIK_GRACE_S"
DEFAULT_INTERVAL_S = 10.0
DEFAULT_GRACE_S = 60.0


class LiveWorker(dj.Manual):
    definition = """
    # running workers; each one's background thread updates last_beat every few seconds
    host : varchar(255)           # platform.node(), as in the job tables
    pid : int32
    ---
    device = "" : varchar(32)
    started = CURRENT_TIMESTAMP(3) : datetime(3)
    last_beat = CURRENT_TIMESTAMP(3) : datetime(3)   # server time
    """


def timing() -> tuple:
    """``(interval_s, grace_s)`` from the environment; the grace must cover at least two beats."""
    interval = seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S, positive=True)
    grace = seconds(GRACE_ENV, DEFAULT_GRACE_S, positive=True)
    if grace < 2 * interval:
        raise ValueError(f"{GRACE_ENV}={grace:g} must be at least twice {INTERVAL_ENV}={interval:g}, "
                         "or live workers would be declared dead between two beats")
    return interval, grace


def own_id() -> dict:
    """This process's worker key: host and pid."""
    return {"host": platform.node(), "pid": os.getpid()}


def private_connection() -> dj.Connection:
    """A second connection with DataJoint's settings, for a thread that must not share the main one."""
    config = dj.config
    return dj.Connection(config["database.host"], config["database.user"], config["database.password"],
                         None, config["database.use_tls"])


class Heartbeat:
    """Register this worker, beat and sweep from a daemon thread; ``stop`` deregisters.

    Args:
        sweep: called as ``sweep(connection, grace_s)`` after each beat (see :func:`schemas.recovery.sweep`).
        device: shown by ``v1fabrik status``.
    """

    def __init__(self, sweep, device=None):
        self.interval_s, self.grace_s = timing()
        self._sweep, self._device = sweep, device or ""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="v1fabrik-heartbeat", daemon=True)
        self._table = LiveWorker.full_table_name
        self.beats = 0

    def start(self) -> "Heartbeat":
        replace1(LiveWorker, {**own_id(), "device": self._device})
        self._thread.start()
        logger.info("worker %s:%d registered; heartbeat every %g s, grace %g s",
                    *own_id().values(), self.interval_s, self.grace_s)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            (LiveWorker & own_id()).delete_quick()
        except Exception as error:  # the database may be the reason we stop; sweeping cleans up later
            logger.warning("could not deregister this worker (%s)", error)

    def _run(self):
        connection, table = None, self._table
        q = LiveWorker.connection.adapter.quote_identifier
        while not self._stopped.wait(self.interval_s):
            try:
                connection = connection or private_connection()
                beat = connection.query(
                    f"UPDATE {table} SET {q('last_beat')}=CURRENT_TIMESTAMP(3) WHERE {q('host')}=%s AND {q('pid')}=%s",
                    args=tuple(own_id().values()))
                if beat.rowcount == 0:  # swept as dead while we could not beat: register again
                    logger.error("this worker was declared dead (no heartbeat for %g s); its job may run twice",
                                 self.grace_s)
                    connection.query(f"INSERT INTO {table} ({q('host')}, {q('pid')}, {q('device')}) "
                                     "VALUES (%s, %s, %s)", args=(*own_id().values(), self._device))
                self.beats += 1
                self._sweep(connection, self.grace_s)
            except Exception as error:  # a database outage must not kill the thread; beat again later
                logger.warning("heartbeat failed (%s: %s); retrying in %g s",
                               type(error).__name__, error, self.interval_s)
                connection = _closed(connection)


def _closed(connection) -> None:
    """Close ``connection`` if it is open, ignoring errors from a dead server; returns None."""
    if connection is not None:
        try:
            connection.close()
        except Exception:  # already broken
            pass
