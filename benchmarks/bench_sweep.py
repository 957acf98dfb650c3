"""Sweeping cost per heartbeat with K workers: one sweeper at a time, whatever K.

K heartbeats run in this process, each with its own database connection and worker id, as K worker
processes would (the sweep runs in the heartbeat thread, so the training itself does not matter
here). For each K, for ``--seconds``: beats, sweeps run, database time spent trying the sweeper
lock and sweeping, per beat interval. Then the sweeper's heartbeat stops (its connection closes,
releasing the lock) and the time until another worker sweeps is measured. The old behaviour, every
live worker sweeping on every beat, cost K sweeps per interval: the table shows it as K times the
measured cost of one sweep. A private MariaDB server is started (and stopped) here.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py --workers 1 2 4 8 --out benchmarks/results/sweep.json

Results: ``benchmarks/results/sweep.md``.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_pipeline import start_server  # noqa: E402

INTERVAL_S, GRACE_S = 0.5, 2.0


def timed(record: list, fn):
    """``fn`` whose every call's duration is appended to ``record``."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - start)
    return call


def run(k: int, seconds: float) -> dict:
    """K heartbeats for ``seconds``, then the sweeper stops; returns the counts and timings."""
    from schemas.jobs import heartbeat, sweep

    sweeps, tries = [], []
    real_sweep, real_try = sweep.sweep, heartbeat.try_lock
    sweep.sweep, heartbeat.try_lock = timed(sweeps, real_sweep), timed(tries, real_try)  # instrumentation only
    beats = [heartbeat.Heartbeat(ident={"host": "bench", "pid": 10_000 + i}) for i in range(k)]
    try:
        for beat in beats:
            beat.start()
        time.sleep(seconds)
        holders = [b for b in beats if b.sweeping]
        intervals = seconds / INTERVAL_S
        result = {"workers": k, "seconds": seconds, "sweepers_at_once": len(holders),
                  "beats_per_interval": sum(b.beats for b in beats) / intervals,
                  "sweeps_per_interval": len(sweeps) / intervals,
                  "sweep_ms": 1000 * statistics.median(sweeps),
                  "try_lock_ms": 1000 * statistics.median(tries) if tries else 0.0,
                  "db_ms_per_interval": 1000 * (sum(sweeps) + sum(tries)) / intervals,
                  "old_every_worker_sweeps_ms_per_interval": 1000 * k * statistics.median(sweeps)}
        if k > 1:
            before, stopped = len(sweeps), time.monotonic()
            holders[0].stop()
            while len(sweeps) == before:
                time.sleep(0.01)
            result["takeover_s"] = time.monotonic() - stopped
        return result
    finally:
        for beat in beats:
            beat.stop()
        sweep.sweep, heartbeat.try_lock = real_sweep, real_try


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args()
    os.environ.update({"V1FABRIK_HEARTBEAT_S": str(INTERVAL_S), "V1FABRIK_GRACE_S": str(GRACE_S)})
    home = Path(tempfile.mkdtemp(prefix="v1fabrik-bench-sweep-"))
    srv = start_server(home)
    try:
        import schemas

        schemas.activate("bench_sweep_")
        rows = [run(k, args.seconds) for k in args.workers]
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                              "load_average": os.getloadavg()},
                  "heartbeat_s": INTERVAL_S, "grace_s": GRACE_S,
                  "command": " ".join(["python", "benchmarks/bench_sweep.py", *sys.argv[1:]]), "runs": rows}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        for row in rows:
            print(row)
    finally:
        from schemas.server import local

        local.down(srv)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
