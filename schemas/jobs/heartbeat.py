"""Heartbeat: who is alive, so that dead workers' jobs can be taken over.

Each worker registers itself in ``LiveWorker`` (host and pid, as DataJoint writes them into a
reserved job row) and a background thread with its own database connection updates ``last_beat``
every ``$V1FABRIK_HEARTBEAT_S`` seconds (default 10), using the server's clock. A worker whose
last beat is older than ``$V1FABRIK_GRACE_S`` (default 60) is dead (:mod:`.sweep`). A worker that
finds it was declared dead (its row gone) registers again and calls ``on_lost``: the job it was
running has gone back to the queue, and it stops that job at the next checkpoint.
"""
import logging
import threading

from ..server.connection import private_connection
from ..server.sql import replace1, try_lock
from ..tables.jobtable import own_id
from ..tables.workers import LiveWorker
from . import sweep
from .recovery import job_tables
from .settings import seconds

logger = logging.getLogger(__name__)

INTERVAL_ENV = "V1FABRIK_HEARTBEAT_S"
GRACE_ENV = "V1FABRIK_GRACE_S"
DEFAULT_INTERVAL_S = 10.0
DEFAULT_GRACE_S = 60.0


def timing() -> tuple:
    """``(interval_s, grace_s)`` from the environment; the grace must cover at least two beats."""
    interval = seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S, positive=True)
    grace = seconds(GRACE_ENV, DEFAULT_GRACE_S, positive=True)
    if grace < 2 * interval:
        raise ValueError(f"{GRACE_ENV}={grace:g} must be at least twice {INTERVAL_ENV}={interval:g}, "
                         "or live workers would be declared dead between two beats")
    return interval, grace


class Heartbeat:
    """Register this worker, beat and (when it holds the sweeper lock) sweep from a daemon thread.

    Args:
        device: shown by ``v1fabrik status``.
        on_lost: called when this worker finds it was declared dead.
        ident: the worker's ``{"host", "pid"}``; default this process's, as the job tables record it.
    """

    def __init__(self, device=None, on_lost=lambda: None, ident=None):
        self.interval_s, self.grace_s = timing()
        self._device, self._on_lost = device or "", on_lost
        self.ident = ident or own_id()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="v1fabrik-heartbeat", daemon=True)
        self._table = LiveWorker.full_table_name
        self._jobs, self._lock = job_tables(), sweep.lock_name()
        self.beats = self.sweeps = 0
        self.sweeping = False

    def start(self) -> "Heartbeat":
        """Register, beat and sweep once before returning (a new worker's first pass then finds the jobs of
        dead workers already pending), then go on from the thread."""
        replace1(LiveWorker, {**self.ident, "device": self._device})
        self._connection = self._tick(None)
        self._thread.start()
        logger.info("worker %s:%d registered; heartbeat every %g s, grace %g s",
                    *self.ident.values(), self.interval_s, self.grace_s)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            (LiveWorker & self.ident).delete_quick()
        except Exception as error:  # the database may be the reason we stop; sweeping cleans up later
            logger.warning("could not deregister this worker (%s)", error)

    def _run(self):
        connection = self._connection
        while not self._stopped.wait(self.interval_s):
            connection = self._tick(connection)
        _closed(connection)

    def _tick(self, connection):
        """One beat, and a sweep when this worker holds (or takes) the sweeper lock; returns the connection to reuse."""
        try:
            connection = connection or private_connection()
            self._beat(connection)
            if self.sweeping or try_lock(connection, self._lock):
                self.sweeping = True
                sweep.sweep(connection, self.grace_s, self._jobs)
                self.sweeps += 1
        except Exception as error:  # a database outage must not kill the thread; beat again later
            logger.warning("heartbeat failed (%s: %s); retrying in %g s",
                           type(error).__name__, error, self.interval_s)
            connection, self.sweeping = _closed(connection), False
        return connection

    def _beat(self, connection):
        q = connection.adapter.quote_identifier
        beat = connection.query(
            f"UPDATE {self._table} SET {q('last_beat')}=CURRENT_TIMESTAMP(3) WHERE {q('host')}=%s AND {q('pid')}=%s",
            args=tuple(self.ident.values()))
        if beat.rowcount == 0:  # swept as dead while we could not beat: our job went back to the queue
            logger.error("this worker was declared dead (no heartbeat for %g s): its job stops at the next "
                         "checkpoint, and another worker resumes it", self.grace_s)
            self._on_lost()
            connection.query(f"INSERT INTO {self._table} ({q('host')}, {q('pid')}, {q('device')}) "
                             "VALUES (%s, %s, %s)", args=(*self.ident.values(), self._device))
        self.beats += 1


def _closed(connection) -> None:
    """Close ``connection`` if it is open, ignoring errors from a dead server; returns None."""
    if connection is not None:
        try:
            connection.close()
        except Exception:  # already broken
            pass
