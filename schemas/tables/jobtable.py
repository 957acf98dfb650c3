"""Job tables in which only the process holding a reservation completes or fails it.

DataJoint 2.3.5 marks a job done or failed by its key alone. A worker that was swept as dead (its
heartbeat late, its job handed back to the queue and perhaps to another worker) would then
overwrite the new owner's reservation. :class:`OwnedJob` keeps DataJoint's job table and changes
only that: ``complete`` and ``error`` touch the row while this process (host and pid, as
``reserve`` writes them) holds it, and :meth:`OwnedJob.holds` lets ``make_insert`` check the
reservation, locked to the end of its transaction, before it writes a result.
"""
import logging
import os
import platform

from datajoint.jobs import Job

from ..server.sql import atomic

logger = logging.getLogger(__name__)


class JobLost(RuntimeError):
    """This process no longer holds the job's reservation (it was swept as dead); its result is dropped."""


def own_id() -> dict:
    """This process as the job tables and LiveWorker record it: host and pid."""
    return {"host": platform.node(), "pid": os.getpid()}


class OwnedJob(Job):
    """DataJoint's job table of one computed table, completed and failed only by the reservation's holder."""

    _reserved_here = set()  # (job table, key) pairs this process reserved and has not finished

    def reserve(self, key: dict) -> bool:
        reserved = super().reserve(key)
        if reserved:
            OwnedJob._reserved_here.add(self._ident(key))
        return reserved

    def reserved_here(self, key: dict) -> bool:
        """True when this process reserved ``key`` (distributed populate) and has not finished it."""
        return self._ident(key) in OwnedJob._reserved_here

    def holds(self, key: dict, lock: bool = False) -> bool:
        """True while this process holds ``key``'s reservation; ``lock`` keeps the row locked until the transaction ends."""
        q = self.adapter.quote_identifier
        pk = self._get_pk(key)
        where = " AND ".join(f"{q(name)}=%s" for name in [*pk, "host", "pid"])
        sql = f"SELECT 1 FROM {self.full_table_name} WHERE {where} AND {q('status')}='reserved'"
        rows = self.connection.query(sql + (" FOR UPDATE" if lock else ""), args=(*pk.values(), *own_id().values()))
        return rows.fetchone() is not None

    def pending_now(self, key: dict) -> bool:
        """True while ``key`` waits in the queue: one query, where ``populate(key)`` would first reload the
        headings of the table and its key source (a cheap check before trying a key another worker may have
        taken or finished since the queue was listed)."""
        q = self.adapter.quote_identifier
        pk = self._get_pk(key)
        where = " AND ".join(f"{q(name)}=%s" for name in pk)
        rows = self.connection.query(f"SELECT 1 FROM {self.full_table_name} WHERE {where} AND {q('status')}='pending'",
                                     args=tuple(pk.values()))
        return rows.fetchone() is not None

    def complete(self, key: dict, duration=None) -> None:
        with atomic(self.connection):
            if self._still_ours(key, "completed"):
                super().complete(key, duration=duration)

    def error(self, key: dict, error_message: str, error_stack=None) -> None:
        with atomic(self.connection):
            if self._still_ours(key, f"failed ({error_message[:200]})"):
                super().error(key, error_message=error_message, error_stack=error_stack)

    def _still_ours(self, key, outcome) -> bool:
        """True while this process holds ``key`` (the row stays locked to the end of the caller's transaction)."""
        OwnedJob._reserved_here.discard(self._ident(key))
        if self.holds(key, lock=True):
            return True
        logger.warning("%s job %s %s, but this worker no longer holds it: the job table is left to its new owner",
                       self._target.__class__.__name__, self._get_pk(key), outcome)
        return False

    def _ident(self, key) -> tuple:
        return (self.full_table_name, *sorted(self._get_pk(key).items()))


class _OwnedJobs:
    """Descriptor giving a computed table (class or instance) its :class:`OwnedJob`, declared on first use.

    The class's job table is kept per schema and connection, so ``Table.jobs`` does not load its heading anew
    on every use."""

    def __init__(self):
        self._of_class = {}

    def __get__(self, obj, objtype=None):
        if obj is None:
            bound = (objtype, objtype.database, id(objtype.connection))
            if bound not in self._of_class:
                self._of_class[bound] = self.__get__(objtype(), objtype)
            return self._of_class[bound]
        if obj._jobs is None:
            obj._jobs = OwnedJob(obj)
            if not obj._jobs.is_declared:
                obj._jobs.declare()
        return obj._jobs


class OwnedJobs:
    """Mixin (before ``dj.Computed``): the table's ``jobs`` is an :class:`OwnedJob`."""

    jobs = _OwnedJobs()
