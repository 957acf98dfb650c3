"""Two workers that lose a lock race: the server's deadlock error is recognised and retried, not fatal."""
import threading

import datajoint as dj

from schemas.jobs import recovery
from schemas.server.connection import is_lock_conflict
from schemas.tables.workers import TransientFailure


def bump(connection, table, job_hash):
    """Lock one row, found by its full primary key (a partial key would lock every row it scans)."""
    connection.query(f"UPDATE {table.full_table_name} SET attempts = attempts + 1 "
                     "WHERE table_name = 'Deadlock' AND job_hash = %s", args=(job_hash,))


def test_a_real_deadlock_between_two_connections_is_a_lock_conflict(db_prefix):
    table = TransientFailure()
    hashes = ("a" * 32, "b" * 32)
    table.insert([{"table_name": "Deadlock", "job_hash": h, "attempts": 0, "last_error": ""} for h in hashes])
    other = dj.Connection(dj.config["database.host"], dj.config["database.user"], dj.config["database.password"],
                          backend=dj.config["database.backend"])
    both_hold_one_row = threading.Barrier(2, timeout=30)
    errors = []

    def cross(connection, mine, theirs):
        connection.start_transaction()
        try:
            bump(connection, table, mine)
            both_hold_one_row.wait()
            bump(connection, table, theirs)  # each now waits for the other: the server must pick a victim
        except Exception as error:
            errors.append(error)
        finally:
            connection.cancel_transaction()

    threads = [threading.Thread(target=cross, args=(table.connection, *hashes)),
               threading.Thread(target=cross, args=(other, *reversed(hashes)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    other.close()

    assert len(errors) == 1, errors
    assert is_lock_conflict(errors[0]), repr(errors[0])
    assert recovery.is_transient(errors[0])
    assert table.to_arrays("attempts").tolist() == [0, 0]  # both transactions were rolled back


def test_the_worker_runs_a_pass_again_after_losing_a_lock_race(db_prefix, monkeypatch):
    import pymysql

    from schemas.jobs.worker import Worker

    worker, passes = Worker(), []

    def run_once():
        passes.append(len(passes))
        if len(passes) == 1:
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return False  # nothing left to do: the worker stops

    monkeypatch.setattr(worker, "run_once", run_once)
    worker._loop(interval_s=0.1)
    assert passes == [0, 1]
