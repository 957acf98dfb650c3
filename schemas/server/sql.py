"""SQL that DataJoint 2.3.5 does not give the same way on MySQL, MariaDB and PostgreSQL.

- :func:`atomic`: a transaction that joins the caller's open one;
- :func:`replace1`: insert-or-overwrite one row (DataJoint sends ``REPLACE INTO`` on every backend,
  and PostgreSQL has none: there the row is deleted and inserted again in one transaction);
- :func:`server_lock` and :func:`try_lock`: database-wide named locks held by a connection's session
  (``GET_LOCK`` on MySQL/MariaDB, advisory locks on PostgreSQL), released by the server when the
  connection dies.
"""
import contextlib
import time
import zlib

import datajoint as dj

LOCK_TIMEOUT_S = 120
LOCK_POLL_S = 0.2


class LockTimeout(TimeoutError):
    """Another process held a named lock for too long."""


def atomic(connection):
    """A transaction on ``connection``, or nothing when the caller's transaction is already open."""
    return contextlib.nullcontext() if connection.in_transaction else connection.transaction


def replace1(table, row: dict) -> None:
    """Insert ``row`` into ``table``, overwriting the row with the same primary key if there is one."""
    connection = table.connection
    if connection.adapter.backend != "postgresql":
        table.insert1(row, replace=True)
        return
    key = {name: row[name] for name in table.primary_key}
    with atomic(connection):
        (table & key).delete_quick()
        table.insert1(row)


def try_lock(connection, name: str) -> bool:
    """Take the named lock ``name`` for ``connection``'s session if it is free; True when held now."""
    if connection.adapter.backend == "postgresql":
        return bool(connection.query("SELECT pg_try_advisory_lock(%s)", args=(_lock_id(name),)).fetchone()[0])
    return connection.query("SELECT GET_LOCK(%s, 0)", args=(name[:64],)).fetchone()[0] == 1


def release_lock(connection, name: str) -> None:
    """Release the named lock ``name`` held by ``connection``'s session."""
    if connection.adapter.backend == "postgresql":
        connection.query("SELECT pg_advisory_unlock(%s)", args=(_lock_id(name),))
    else:
        connection.query("SELECT RELEASE_LOCK(%s)", args=(name[:64],))


@contextlib.contextmanager
def server_lock(name: str, timeout_s: float = LOCK_TIMEOUT_S, connection=None):
    """Hold the named lock ``name`` for the block; LockTimeout after ``timeout_s`` on either backend."""
    connection = connection or dj.conn()
    deadline = time.monotonic() + timeout_s
    while not try_lock(connection, name):
        if time.monotonic() > deadline:
            raise LockTimeout(f"waited {timeout_s:g} s for the database lock {name!r}; is another process stuck holding it?")
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        release_lock(connection, name)


def _lock_id(name: str) -> int:
    return zlib.crc32(name.encode())
