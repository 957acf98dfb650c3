"""Insert-or-overwrite of one row that works on MySQL, MariaDB and PostgreSQL.

DataJoint 2.3.5 sends ``REPLACE INTO`` for ``insert1(row, replace=True)`` on every backend, and
PostgreSQL has no ``REPLACE``. There the row is deleted and inserted again in one transaction.
"""
import contextlib


def replace1(table, row: dict) -> None:
    """Insert ``row`` into ``table``, overwriting the row with the same primary key if there is one."""
    connection = table.connection
    if connection.adapter.backend != "postgresql":
        table.insert1(row, replace=True)
        return
    key = {name: row[name] for name in table.primary_key}
    with contextlib.nullcontext() if connection.in_transaction else connection.transaction:
        (table & key).delete_quick()
        table.insert1(row)
