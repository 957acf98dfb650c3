"""GPU training throughput of the seed notebook model, ours and the reference, and several jobs per GPU.

One command, about 5 minutes on an H200; writes a markdown report (``benchmarks/results/gpu.md``)
and its JSON beside it:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py --out benchmarks/results/gpu.md

Part 1, per setting (full resolution 144×256, batch 32; 36×64, batch 128), numerics (fp32 with TF32
off, TF32, bf16 autocast) and model (the reference, ours; ours channels-last under bf16): training
images/s (median of ``--repeats`` fwd+bwd+Adam steps after warm-up, device-synchronised), peak
device memory and the first step's seconds. Autocast wraps the forward pass of both models alike.
Part 2, several jobs per GPU: K = 1, 2, 4 worker processes on the one device, each training ours at
full resolution, batch 32 (fp32 and bf16 autocast); aggregate images/s over the span from the first
worker's start to the last one's end (all start together after warm-up).

``--device cpu --quick`` runs the same code on tiny settings (tests/unit/test_bench_gpu.py), so the
script is not first run on a GPU.
"""
import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.bench_model import DATA_KEY, train_step
from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

logger = logging.getLogger("bench_gpu")
REFERENCE = "reference (neuralpredictors 0.3.0)"
NUMERICS = ["fp32", "tf32", "bf16 autocast"]
SETTINGS = {"full": [((144, 256), 32), ((36, 64), 128)], "quick": [((36, 64), 4), ((18, 32), 8)]}
NEURONS = {"full": 7538, "quick": 50}
WORKERS = {"full": (1, 2, 4), "quick": (1, 2)}
CONCURRENT_NUMERICS = {"full": ["fp32", "bf16 autocast"], "quick": ["fp32"]}


@contextlib.contextmanager
def numerics(name, device):
    """fp32 (TF32 off), TF32 matmuls and convolutions, or bf16 autocast of the forward pass."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        if name == "bf16 autocast":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name, loaders):
    """The reference or ours (``channels_last`` for the channels-last variant), seeded alike."""
    if name == REFERENCE:
        return reference_model(loaders, 42, **SEED_CONFIG)
    return stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG, channels_last="channels-last" in name)


def measure(model, images, pupil_center, numerics_name, repeats, device):
    """Images/s, peak device memory (GiB; None on the CPU) and first-step seconds of fwd+bwd+Adam steps."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        with numerics(numerics_name, device):
            train_step(model, images, pupil_center)
        optimizer.step()
        synchronize(device)

    synchronize(device)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(2):  # cudnn autotuning
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return dict(images_per_s=len(images) / statistics.median(seconds), peak_gib=peak, first_step_s=first)


def single_jobs(device, size, repeats):
    """Part 1 rows: every setting × numerics × model."""
    rows = []
    for (height, width), batch in SETTINGS[size]:
        loaders = stand_in_loaders(DATA_KEY, NEURONS[size], (1, height, width), n_trials=2, batch_size=2)
        images = torch.randn(batch, 1, height, width, device=device)
        pupil_center = torch.randn(batch, 2, device=device)
        for numerics_name in NUMERICS:
            models = [REFERENCE, "ours"] + ["ours, channels-last"] * (numerics_name == "bf16 autocast")
            for name in models:
                model = build(name, loaders)
                try:
                    row = measure(model, images, pupil_center, numerics_name, repeats, device)
                except Exception as error:  # record and go on: one failing row must not lose the others
                    row = {"error": f"{type(error).__name__}: {error}"[:300]}
                row.update(resolution=f"{height}x{width}", batch=batch, numerics=numerics_name, model=name)
                logger.info("%s", row)
                rows.append(row)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def worker(device_name, size, numerics_name, steps, barrier, results):
    """One job of part 2: ours on the shared device; reports its own training span."""
    torch.set_num_threads(1)
    device = torch.device(device_name)
    (height, width), batch = SETTINGS[size][0]
    loaders = stand_in_loaders(DATA_KEY, NEURONS[size], (1, height, width), n_trials=2, batch_size=2)
    model = build("ours", loaders).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 1, height, width, device=device)
    pupil_center = torch.randn(batch, 2, device=device)

    def step():
        with numerics(numerics_name, device):
            train_step(model, images, pupil_center)
        optimizer.step()

    for _ in range(3):
        step()
    synchronize(device)
    barrier.wait()
    start = time.time()
    for _ in range(steps):
        step()
    synchronize(device)
    results.put(dict(start=start, end=time.time(), images=steps * batch))


def concurrent_jobs(device, size, steps):
    """Part 2 rows: aggregate images/s of K worker processes training at once on ``device``."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for numerics_name in CONCURRENT_NUMERICS[size]:
        for workers in WORKERS[size]:
            barrier, results = context.Barrier(workers), context.Queue()
            arguments = (str(device), size, numerics_name, steps, barrier, results)
            processes = [context.Process(target=worker, args=arguments) for _ in range(workers)]
            for process in processes:
                process.start()
            spans = [results.get(timeout=300) for _ in processes]
            for process in processes:
                process.join()
            seconds = max(s["end"] for s in spans) - min(s["start"] for s in spans)
            rows.append(dict(workers=workers, numerics=numerics_name, resolution=SETTINGS[size][0],
                             images_per_s=sum(s["images"] for s in spans) / seconds))
            logger.info("%s", rows[-1])
    for row in rows:
        single = next(r for r in rows if r["workers"] == 1 and r["numerics"] == row["numerics"])
        row["x_one_worker"] = row["images_per_s"] / single["images_per_s"]
    return rows


def markdown(record):
    """The report: part 1 and part 2 tables with the command, machine and date."""
    lines = [f"# GPU training throughput, {record['date']}", "", f"`{record['command']}` ({record['seconds']:.0f} s)",
             "", f"Device: {record['device']}; host: {record['host']}; {record['versions']}", "",
             "## Part 1: one job", "",
             "| resolution, batch | numerics | model | images/s | × reference | peak memory GiB | first step s |",
             "|---|---|---|---|---|---|---|"]
    for r in record["single"]:
        if "error" in r:
            lines.append(f"| {r['resolution']}, {r['batch']} | {r['numerics']} | {r['model']} | {r['error']} | | | |")
            continue
        reference = next((x for x in record["single"] if x["model"] == REFERENCE and "error" not in x
                          and (x["resolution"], x["numerics"]) == (r["resolution"], r["numerics"])), None)
        ratio = f"{r['images_per_s'] / reference['images_per_s']:.2f}×" if reference else "—"
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"| {r['resolution']}, {r['batch']} | {r['numerics']} | {r['model']} | {r['images_per_s']:.1f} "
                     f"| {ratio} | {peak} | {r['first_step_s']:.2f} |")
    lines += ["", "## Part 2: several jobs on one device (ours)", "",
              "| workers | numerics | resolution, batch | aggregate images/s | × one worker |", "|---|---|---|---|---|"]
    for r in record["concurrent"]:
        (height, width), batch = r["resolution"]
        lines.append(f"| {r['workers']} | {r['numerics']} | {height}x{width}, {batch} | {r['images_per_s']:.1f} "
                     f"| {r['x_one_worker']:.2f}× |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--quick", action="store_true", help="tiny settings and few steps (a check that it runs)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--worker-steps", type=int, default=30, help="steps each worker of part 2 times")
    parser.add_argument("--out", required=True, help="markdown report; its JSON goes beside it (.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here; use --device cpu --quick to check the script")
    torch.backends.cudnn.benchmark = True
    size = "quick" if args.quick else "full"
    repeats, steps = (1, 2) if args.quick else (args.repeats, args.worker_steps)
    started = time.perf_counter()
    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        host=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        versions=dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None),
        command="PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py "
                f"--device {args.device}{' --quick' if args.quick else ''} --out {args.out}",
        single=single_jobs(device, size, repeats),
        concurrent=concurrent_jobs(device, size, steps),
    )
    record["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(markdown(record))
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
