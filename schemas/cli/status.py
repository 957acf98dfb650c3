"""``v1fabrik status``: how far populate is, per table, live workers, stale reservations, latest errors."""
from ..jobs import heartbeat
from ..jobs.sweep import stale_reservations
from ..tables import SCORE_TABLES, DataInfo, LiveWorker, TrainedModel

COLUMNS = ("table", "to do", "pending", "reserved", "error", "done")


def progress() -> list:
    """One dict per computed table: keys still to do, job counts by status, and rows done."""
    rows = []
    for table in (DataInfo, TrainedModel, *SCORE_TABLES):
        remaining, _total = table.progress()
        jobs = table.jobs.progress()
        rows.append({"table": table.__name__, "to do": remaining, "pending": jobs["pending"],
                     "reserved": jobs["reserved"], "error": jobs["error"], "done": len(table())})
    return rows


def latest_errors(limit=5) -> list:
    """The most recent job errors over all computed tables: table, key, host, time and message."""
    errors = []
    for table in (DataInfo, TrainedModel, *SCORE_TABLES):
        for job in table.jobs.errors.to_dicts(order_by="completed_time DESC", limit=limit):
            key = {k: job[k] for k in table.primary_key}
            errors.append({"table": table.__name__, "key": key, "host": job["host"],
                           "time": job["completed_time"], "message": job["error_message"]})
    return sorted(errors, key=lambda e: e["time"], reverse=True)[:limit]


def report(limit=5) -> str:
    """The status table and the latest errors as text."""
    rows = progress()
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for r in rows]
    awaited = TrainedModel.awaited_cores()
    if awaited:
        lines.append(f"models waiting for a core to be trained first: {len(awaited)} "
                     f"(e.g. core of {awaited[0]['model_fn']} {awaited[0]['model_hash']} seed {awaited[0]['seed']})")
    workers = LiveWorker.to_dicts(order_by="started")
    lines.append(f"\nlive workers: {len(workers)}")
    lines += [f"  {w['host']}:{w['pid']} on {w['device'] or 'default device'}, started {w['started']}, "
              f"last beat {w['last_beat']}" for w in workers]
    stale = stale_reservations(heartbeat.timing()[0])
    if stale:
        lines.append("stale reservations (back to pending once the grace period has passed):")
        lines += [f"  {table} {key} on {host}:{pid}, last beat {beat}" for table, key, host, pid, beat in stale]
    errors = latest_errors(limit)
    if errors:
        lines.append("\nlatest errors (clear with `<Table>.jobs.errors.delete()` to retry):")
        for e in errors:
            key = ", ".join(f"{k}={v}" for k, v in e["key"].items() if not k.endswith("_hash"))
            lines.append(f"  {e['time']} {e['table']} [{key}] on {e['host']}: {e['message']}")
    return "\n".join(lines)
