"""Pipeline overhead per job and worker scale-out, on a private MariaDB server started (and stopped) here.

overhead: one in-process worker trains and scores tiny jobs (``quick_trainer``, 1 epoch). Per job:
    worker wall time against the trainer's own ``duration`` (the rest is fetch, build, job table,
    weights and score inserts), checkpoint write time, and for the seed notebook model (7538 neurons)
    the weight blob size, its insert and fetch latency and a checkpoint (weights + Adam state) write.
scaleout: K = 1, 2, 4 ``v1fabrik worker`` processes on their own experiment of N jobs. "sleep" jobs
    (``slow_trainer``: a tiny epoch plus a pause) isolate the database and job-table overhead from the
    CPU, "cpu" jobs (``quick_trainer``, many epochs) are compute-bound. DB round trips per job come
    from the server's ``Questions``/``Com_*`` counters (the server serves only this benchmark).
queue: the queue at cluster scale: K = ``--workers`` (1 4 16 32) worker processes on sleep jobs,
    ``--rounds`` (≥ 2) jobs per worker. jobs/min two ways: end to end (jobs / (wall − the start-up of
    K idle workers started together)), and steady (the jobs finished after the K-th over the time from
    the K-th result to the last, from the results' timestamps: after the first round, start-up no
    longer counts); round trips per job, the workers' summed resident memory and the machine's lowest
    available memory.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_pipeline.py --out /tmp/pipeline.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_pipeline.py --kinds queue --skip-overhead --out /tmp/queue.json

Results: ``benchmarks/results/pipeline.md``.
"""
import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402

logger = logging.getLogger("bench_pipeline")
HELPERS = "tests.integration"
DATASET = "pipeline.datasets.static_loaders"
MODEL = "pipeline.models.stacked_core_full_gauss_readout"
QUICK = f"{HELPERS}.fabrik_functions.quick_trainer"
SLOW = f"{HELPERS}.fault_functions.slow_trainer"
COUNTERS = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_delete", "Com_replace", "Com_commit")


def start_server(home: Path) -> dict:
    """Start MariaDB under ``home`` and point this process (and its children) at it through DJ_* variables."""
    from schemas.server import local as dbserver

    srv = dbserver.server("mariadb", home=home, port=free_port())
    settings = dbserver.up(srv, workdir=home)
    os.environ.update(DJ_HOST=settings["host"], DJ_PORT=str(settings["port"]), DJ_USER=settings["user"],
                      DJ_PASS=settings["password"], DJ_BACKEND=settings["backend"])
    import datajoint as dj  # read its settings at import: set them here too, for this process

    for name in ("host", "port", "user", "password", "backend"):
        dj.config[f"database.{name}"] = settings[name]
    return srv


def counters() -> dict:
    import datajoint as dj

    rows = dj.conn().query("SHOW GLOBAL STATUS WHERE Variable_name IN (%s)" % ",".join(f"'{c}'" for c in COUNTERS))
    return {name: int(value) for name, value in rows.fetchall()}


def register(fabrik, name, dataset_key, trainer_fn, trainer_config, n_models, seeds):
    """Experiment ``name``: the tiny dataset x ``n_models`` tiny-model variants x one trainer x ``seeds``."""
    from tests.integration.test_pipeline import TINY_MODEL

    fabrik.Seed.insert([{"seed": s} for s in seeds], skip_duplicates=True)
    models = [fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_channels": 2 + c}, skip_duplicates=True)
              for c in range(n_models)]
    trainer = fabrik.Trainer().add_entry(trainer_fn, trainer_config, skip_duplicates=True)
    return fabrik.Experiment().add(name, [dataset_key], models, [trainer], list(seeds))


def overhead(fabrik, dataset_key, n_jobs) -> dict:
    """Per-job time outside the trainer, for an in-process worker on ``n_jobs`` tiny 1-epoch jobs."""
    from schemas.jobs.worker import Worker
    from schemas.tables.trained import TrainedModel

    register(fabrik, "overhead", dataset_key, QUICK, {"epochs": 1}, n_jobs, [1])
    writes = []
    save = TrainedModel._save_checkpoint

    def timed_save(self, *args):
        start = time.perf_counter()
        try:
            return save(self, *args)
        finally:
            writes.append(time.perf_counter() - start)

    TrainedModel._save_checkpoint = timed_save  # instrumentation only: the real write runs
    before, start = counters(), time.perf_counter()
    try:
        worker = Worker(device="cpu", experiment="overhead").run()
    finally:
        TrainedModel._save_checkpoint = save
    wall, after = time.perf_counter() - start, counters()
    durations = (fabrik.TrainedModel & fabrik.Experiment.combinations("overhead")).to_arrays("duration")
    assert worker.trained == n_jobs == len(durations), (worker.trained, worker.failed)
    return {"jobs": n_jobs, "wall_s": wall, "trainer_s_per_job": float(durations.mean()),
            "outside_trainer_s_per_job": (wall - durations.sum()) / n_jobs,
            "checkpoint_write_ms": 1000 * statistics.median(writes),
            "round_trips_per_job": {k: (after[k] - before[k]) / n_jobs for k in COUNTERS}}


def seed_model_blobs(fabrik, dataset_key, repeats=5) -> dict:
    """Weight blob size and insert/fetch latency, and a checkpoint write, for the seed notebook model."""
    import datajoint as dj
    import torch

    from pipeline.models import stacked_core_full_gauss_readout
    from pipeline.training.checkpoints import state_to_arrays
    from schemas.server.sql import replace1
    from schemas.tables.trained import weights_to_numpy
    from tests.unit.models_reference import SEED_CONFIG, stand_in_loaders

    loaders = stand_in_loaders("27204-5-13", 7538, (1, 36, 64), n_trials=2, batch_size=2)
    model = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG)
    optimizer = torch.optim.Adam(model.parameters())
    batch = next(iter(loaders["train"]["27204-5-13"]))
    model(batch.images, data_key="27204-5-13", pupil_center=batch.pupil_center).sum().backward()
    optimizer.step()
    weights = weights_to_numpy(model.state_dict())
    model_key = fabrik.Model().add_entry(MODEL, SEED_CONFIG, skip_duplicates=True)
    trainer_key = fabrik.Trainer().add_entry(QUICK, {"epochs": 1}, skip_duplicates=True)
    fabrik.Seed.insert1({"seed": 999}, skip_duplicates=True)
    key = {**dataset_key, **model_key, **trainer_key, "seed": 999}
    row = {**key, "score": 0.0, "output": {}, "code_version": "bench", "host": "bench", "device": "cpu", "duration": 0.0}
    inserts, fetches, checkpoints = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with dj.conn().transaction:
            fabrik.TrainedModel.insert1(row, allow_direct_insert=True)
            fabrik.TrainedModel.Weights.insert1({**key, "state_dict": weights}, allow_direct_insert=True)
        inserts.append(time.perf_counter() - start)
        start = time.perf_counter()
        fetched = (fabrik.TrainedModel.Weights & key).fetch1("state_dict")
        fetches.append(time.perf_counter() - start)
        (fabrik.TrainedModel.Weights & key).delete_quick()
        (fabrik.TrainedModel & key).delete_quick()
        start = time.perf_counter()
        state = state_to_arrays({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1})
        replace1(fabrik.Checkpoint, {**key, "epoch": 1, "state": state, "checkpoint_host": "bench"})
        checkpoints.append(time.perf_counter() - start)
    assert all((fetched[k] == v).all() for k, v in weights.items())
    (fabrik.Checkpoint & key).delete_quick()
    return {"parameters": sum(v.size for v in weights.values()),
            "weights_mib": sum(v.nbytes for v in weights.values()) / 2**20,
            "blob_mib": len(dj.blob.pack(weights)) / 2**20,
            "checkpoint_blob_mib": len(dj.blob.pack(state)) / 2**20,
            "insert_ms": 1000 * statistics.median(inserts), "fetch_ms": 1000 * statistics.median(fetches),
            "checkpoint_write_ms": 1000 * statistics.median(checkpoints)}


class MemorySampler(threading.Thread):
    """Every ``every_s``: the summed resident memory of ``pids`` and the machine's available memory (GiB)."""

    def __init__(self, pids, every_s=2.0):
        super().__init__(daemon=True)
        self.pids, self.every_s, self.done = pids, every_s, threading.Event()
        self.peak_rss_gib, self.min_available_gib = 0.0, float("inf")

    def run(self):
        while not self.done.wait(self.every_s):
            rss = sum(_status_kib(f"/proc/{pid}/status", "VmRSS:") for pid in self.pids)
            self.peak_rss_gib = max(self.peak_rss_gib, rss / 2**20)
            self.min_available_gib = min(self.min_available_gib, _status_kib("/proc/meminfo", "MemAvailable:") / 2**20)


def _status_kib(path, field) -> int:
    try:
        with open(path) as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith(field)), 0)
    except OSError:  # the process has ended
        return 0


def workers(k, experiment, home) -> tuple:
    """Run ``k`` worker processes on ``experiment`` until it is done; returns (wall seconds, memory sampler)."""
    env = {**os.environ, "V1FABRIK_ALLOWED_MODULES": HELPERS, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "V1FABRIK_SCHEMA_PREFIX": os.environ["V1FABRIK_SCHEMA_PREFIX"]}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", experiment]
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(k)]
    sampler = MemorySampler([proc.pid for proc in procs])
    sampler.start()
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=3600)
            if proc.returncode:
                raise RuntimeError(f"worker exited with {proc.returncode}: {err.decode()[-2000:]}")
    finally:
        sampler.done.set()
    return time.perf_counter() - start, sampler


def scaleout(fabrik, dataset_key, home, kind, ks, n_models, n_seeds, trainer_config) -> list:
    """jobs/min and round trips per job for K workers, each K on a fresh experiment of n_models x n_seeds jobs."""
    trainer_fn = SLOW if kind == "sleep" else QUICK
    register(fabrik, f"{kind}-empty", dataset_key, trainer_fn, trainer_config, 1, [])
    startup, _ = workers(1, f"{kind}-empty", home)  # a worker with nothing to do: imports, connect, sweep
    rows = []
    for i, k in enumerate(ks):
        name = f"{kind}-k{k}"
        seeds = range(100 * (i + 1), 100 * (i + 1) + n_seeds)
        n = register(fabrik, name, dataset_key, trainer_fn, trainer_config, n_models, seeds)
        before = counters()
        wall, _ = workers(k, name, home)
        after = counters()
        done = fabrik.TrainedModel & fabrik.Experiment.combinations(name)
        assert len(done) == n, f"{name}: {len(done)} of {n} jobs done"
        row = {"kind": kind, "workers": k, "jobs": n, "wall_s": wall, "worker_startup_s": startup,
               "jobs_per_min": 60 * n / (wall - startup), "trainer_s_per_job": float(done.to_arrays("duration").mean()),
               "round_trips_per_job": {c: (after[c] - before[c]) / n for c in COUNTERS}}
        logger.info("%s", row)
        rows.append(row)
    for row in rows:
        row["speed_up"] = row["jobs_per_min"] / rows[0]["jobs_per_min"]
    return rows


def queue(fabrik, dataset_key, home, ks, rounds, sleep_s) -> list:
    """Sleep jobs for K workers (K × ``rounds`` jobs each time): jobs/min end to end and steady, round trips, memory."""
    trainer_config = {"epochs": 1, "epoch_s": sleep_s}
    rows = []
    for i, k in enumerate(ks):
        register(fabrik, f"queue-empty-k{k}", dataset_key, SLOW, trainer_config, 1, [])
        startup, _ = workers(k, f"queue-empty-k{k}", home)  # K idle workers started together
        name, n_models = f"queue-k{k}", min(4, k * rounds)
        seeds = range(1000 * (i + 1), 1000 * (i + 1) + -(-k * rounds // n_models))
        n = register(fabrik, name, dataset_key, SLOW, trainer_config, n_models, seeds)
        before = counters()
        wall, memory = workers(k, name, home)
        after = counters()
        done = fabrik.TrainedModel & fabrik.Experiment.combinations(name)
        assert len(done) == n, f"{name}: {len(done)} of {n} jobs done"
        finished = sorted(done.to_arrays("trainedmodel_ts"))  # one-second resolution
        row = {"kind": "queue", "workers": k, "jobs": n, "sleep_s": sleep_s, "wall_s": wall, "startup_s": startup,
               "jobs_per_min": 60 * n / (wall - startup),
               "steady_jobs_per_min": 60 * (n - k) / max((finished[-1] - finished[k - 1]).total_seconds(), 1.0),
               "trainer_s_per_job": float(done.to_arrays("duration").mean()),
               "round_trips_per_job": {c: (after[c] - before[c]) / n for c in COUNTERS},
               "workers_peak_rss_gib": memory.peak_rss_gib, "min_available_gib": memory.min_available_gib,
               "load_average": os.getloadavg()[0]}
        logger.info("%s", row)
        rows.append(row)
    for row in rows:
        row["speed_up"] = row["jobs_per_min"] / rows[0]["jobs_per_min"]
        row["steady_speed_up"] = row["steady_jobs_per_min"] / rows[0]["steady_jobs_per_min"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--overhead-jobs", type=int, default=6)
    parser.add_argument("--sleep-s", type=float, default=4.0, help="pause per sleep job")
    parser.add_argument("--cpu-epochs", type=int, default=25, help="epochs per cpu job")
    parser.add_argument("--jobs", type=int, nargs=2, default=[4, 4], metavar=("MODELS", "SEEDS"),
                        help="jobs per scale-out experiment = MODELS x SEEDS (cpu: MODELS x SEEDS/2)")
    parser.add_argument("--kinds", nargs="+", choices=["sleep", "cpu", "queue"], default=["sleep", "cpu"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32], help="K of the queue kind")
    parser.add_argument("--rounds", type=int, default=2, help="queue kind: jobs per worker")
    parser.add_argument("--queue-sleep-s", type=float, default=60.0, help="queue kind: pause per job")
    parser.add_argument("--skip-overhead", action="store_true", help="only the scale-out parts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    srv = start_server(home)
    os.environ["V1FABRIK_SCHEMA_PREFIX"] = "bench_"
    os.environ["V1FABRIK_ALLOWED_MODULES"] = HELPERS
    os.environ["V1FABRIK_CACHE"] = str(home / "cache")
    try:
        import torch

        import schemas
        from pipeline.datasets import synthetic

        torch.set_num_threads(1)
        schemas.activate()
        schemas.Fabrikant.ensure_current_user()
        path = synthetic.generate(home / "data", seed=0, **synthetic.PRESETS["tiny"])
        dataset_key = schemas.Dataset().add_entry(
            DATASET, {"paths": [str(path)], "batch_size": 32, "include_eye_position": True})
        record = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "datajoint": __import__("datajoint").__version__,
                         "server": schemas.TrainedModel.connection.query("SELECT VERSION()").fetchone()[0]},
            "command": " ".join(["python", "benchmarks/bench_pipeline.py", *sys.argv[1:]]),
        }
        if not args.skip_overhead:
            record.update(overhead=overhead(schemas, dataset_key, args.overhead_jobs),
                          seed_model=seed_model_blobs(schemas, dataset_key))
        logger.info("%s", record)
        models, seeds = args.jobs
        record["scaleout"] = []
        if "sleep" in args.kinds:
            record["scaleout"] += scaleout(schemas, dataset_key, home, "sleep", [1, 2, 4], models, seeds,
                                           {"epochs": 1, "epoch_s": args.sleep_s})
        if "cpu" in args.kinds:
            record["scaleout"] += scaleout(schemas, dataset_key, home, "cpu", [1, 2], models, seeds // 2,
                                           {"epochs": args.cpu_epochs})
        if "queue" in args.kinds:
            record["scaleout"] += queue(schemas, dataset_key, home, args.workers, args.rounds, args.queue_sleep_s)
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    finally:
        from schemas.server import local as dbserver

        dbserver.down(srv)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
