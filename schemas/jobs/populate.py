"""``v1fabrik populate --workers K``: start K worker processes on this machine and wait for them.

Tables and job tables are declared once here, before any worker starts, so workers never race
on declaration. With GPUs each worker gets its own device; on a CPU-only machine the cores are
split between the workers so that K processes do not oversubscribe them.
"""
import logging
import os
import subprocess
import sys

import torch

from .. import activate

logger = logging.getLogger(__name__)


def worker_devices(workers=None, devices=None) -> list:
    """One device per worker: the given ``devices``, else one GPU each, else ``cpu``."""
    if devices:
        if workers is not None and workers != len(devices):
            raise ValueError(f"--workers {workers} does not match the {len(devices)} devices {devices}")
        return list(devices)
    workers = workers or max(torch.cuda.device_count(), 1)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    gpus = torch.cuda.device_count()
    if gpus:
        if workers > gpus:
            raise ValueError(f"{workers} workers but only {gpus} GPUs; run one worker per GPU or pass --devices")
        return [f"cuda:{i}" for i in range(workers)]
    return ["cpu"] * workers


def populate(workers=None, devices=None, experiment=None, max_jobs=None) -> int:
    """Run one ``v1fabrik worker`` process per device until all work is done; returns the worst exit code."""
    prefix = activate()
    devices = worker_devices(workers, devices)
    cpu_workers = devices.count("cpu")
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": prefix}
    if cpu_workers:
        env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // cpu_workers, 1)))
    command = [sys.executable, "-m", "schemas.cli", "worker"]
    for flag, value in (("--experiment", experiment), ("--max-jobs", max_jobs)):
        if value is not None:
            command += [flag, str(value)]
    logger.info("starting %d workers on %s", len(devices), ", ".join(devices))
    procs = [subprocess.Popen([*command, "--device", device], env=env) for device in devices]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        logger.error("worker exit codes: %s", codes)
    return max(codes)
