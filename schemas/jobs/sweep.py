"""Sweeping: the jobs of dead workers, and preempted jobs nobody handed back, go back to pending.

A worker is dead when its heartbeat is older than the grace period. One worker sweeps at a time:
the first whose heartbeat takes the database-wide lock ``v1fabrik:sweep:<schema>`` keeps it and
sweeps on every beat; the others only try the lock (one query a beat). When the sweeper dies, the
server drops its connection and with it the lock, and the next worker to try takes over. So the
database work of sweeping per beat does not grow with the number of workers.
"""
import datetime
import logging

import datajoint as dj

from ..tables import COMPUTED
from ..tables.workers import LiveWorker
from .recovery import repend

logger = logging.getLogger(__name__)

# Job error messages (DataJoint writes "<ExceptionName>: <message>") of jobs stopped by a signal.
PREEMPTED_MESSAGES = ("Preempted:%", "SystemExit: SIGTERM received")


def lock_name() -> str:
    """The sweeper lock of the bound schema."""
    return f"v1fabrik:sweep:{LiveWorker.database}"


def sweep(connection, grace_s: float, jobs: dict) -> int:
    """Re-pend the jobs of workers silent for more than ``grace_s`` and of preempted jobs; returns how many.

    Args:
        connection: the caller's own connection (the heartbeat thread's).
        jobs: ``{table name: job table}`` from :func:`schemas.jobs.recovery.job_tables`.
    """
    q = connection.adapter.quote_identifier
    workers = LiveWorker.full_table_name
    cutoff = connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0] - datetime.timedelta(seconds=grace_s)
    dead = connection.query(f"SELECT {q('host')}, {q('pid')} FROM {workers} WHERE {q('last_beat')} < %s",
                            args=(cutoff,)).fetchall()
    count = 0
    for host, pid in dead:
        # A beat between the SELECT and this DELETE keeps the worker alive.
        gone = connection.query(f"DELETE FROM {workers} WHERE {q('host')}=%s AND {q('pid')}=%s AND {q('last_beat')} < %s",
                                args=(host, pid, cutoff)).rowcount
        if not gone:
            continue
        for name, job_table in jobs.items():
            n = repend(connection, job_table, f"{q('status')}='reserved' AND {q('host')}=%s AND {q('pid')}=%s",
                       (host, pid))
            if n:
                logger.warning("worker %s:%s has not beaten for %g s: %d %s job(s) back to pending",
                               host, pid, grace_s, n, name)
            count += n
    preempted = " OR ".join(f"{q('error_message')} LIKE %s" for _ in PREEMPTED_MESSAGES)
    for job_table in jobs.values():
        count += repend(connection, job_table, f"{q('status')}='error' AND ({preempted})", PREEMPTED_MESSAGES)
    return count


def stale_reservations(interval_s: float) -> list:
    """Reserved jobs whose registered worker missed its last two beats: ``[(table, key, host, pid, last beat)]``."""
    cutoff = dj.conn().query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0] - datetime.timedelta(seconds=2 * interval_s)
    silent = {(w["host"], w["pid"]): w["last_beat"] for w in (LiveWorker & f"last_beat < '{cutoff}'").to_dicts()}
    found = []
    for table in COMPUTED:
        for job in table.jobs.reserved.to_dicts():
            if (job["host"], job["pid"]) in silent:
                key = {k: job[k] for k in table.primary_key}
                found.append((table.__name__, key, job["host"], job["pid"], silent[job["host"], job["pid"]]))
    return found
