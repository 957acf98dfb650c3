"""GPU training throughput of the seed notebook model: ours (default and opt-in fast paths) and the reference.

Prepared for one run on a GPU machine (the H200 of the ``device`` tool); it has not run yet (see
``benchmarks/README.md``). Per resolution (seed notebook: full resolution, batch 32; scale 0.25,
batch 128) and model: training images/s (median of ``--repeats`` timed fwd+bwd+Adam steps after
warm-up, CUDA-synchronised), peak GPU memory of those steps, the first step's time (compilation),
and the epoch time this throughput gives on the realistic preset's 5000 training images (data
loading excluded). Models carry identical weights; ``train_step`` is the one of ``bench_model.py``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py --out $OUT/gpu.json

Writes JSON with machine, versions and command; record the table in ``benchmarks/results/gpu.md``.
"""
import argparse
import json
import logging
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from benchmarks.bench_model import DATA_KEY, N_NEURONS, train_step
from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

logger = logging.getLogger("bench_gpu")
TRAIN_IMAGES = 5000  # realistic preset's training tier
SETTINGS = [((144, 256), 32), ((36, 64), 128)]
VARIANTS = {
    "ours (default numerics)": {},
    "ours + channels_last": dict(channels_last=True),
    "ours + AMP bf16": dict(autocast_dtype="bfloat16"),
    "ours + AMP fp16": dict(autocast_dtype="float16"),
    "ours + channels_last + AMP bf16": dict(channels_last=True, autocast_dtype="bfloat16"),
    "ours + compile": dict(compile=True),
    "ours + channels_last + AMP bf16 + compile": dict(channels_last=True, autocast_dtype="bfloat16", compile=True),
}


def measure(model, images, pupil_center, repeats, device) -> dict:
    """Images/s, peak memory and first-step seconds of fwd+bwd+Adam steps."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        train_step(model, images, pupil_center)
        optimizer.step()
        torch.cuda.synchronize(device)

    torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(2):  # warm-up after compilation / autotuning
        step()
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    images_per_s = len(images) / statistics.median(times)
    return {"images_per_s": images_per_s, "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "first_step_s": first, "epoch_s": TRAIN_IMAGES / images_per_s}


def run(device, repeats) -> list:
    rows = []
    for (height, width), batch in SETTINGS:
        loaders = stand_in_loaders(DATA_KEY, N_NEURONS, (1, height, width), n_trials=2, batch_size=2)
        initial = reference_model(loaders, 42, **SEED_CONFIG).state_dict()
        images = torch.randn(batch, 1, height, width, device=device)
        pupil_center = torch.randn(batch, 2, device=device)
        builders = {"reference (neuralpredictors 0.3.0)": lambda: reference_model(loaders, 42, **SEED_CONFIG)}
        for name, options in VARIANTS.items():
            builders[name] = lambda options=options: stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG, **options)
        for name, build in builders.items():
            model = build()
            model.load_state_dict(initial)
            try:
                row = measure(model, images, pupil_center, repeats, device)
            except Exception as error:  # record and go on: one failing fast path must not lose the others
                row = {"error": f"{type(error).__name__}: {error}"[:300]}
            row.update(resolution=f"{height}x{width}", batch=batch, model=name)
            logger.info("%s", row)
            rows.append(row)
            del model
            torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; this machine has none")
    device = torch.device("cuda:0")
    torch.backends.cudnn.benchmark = True
    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{torch.cuda.get_device_name(device)}, {platform.processor() or platform.machine()}",
        versions=dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version()),
        command=f"PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py --repeats {args.repeats} --out gpu.json",
        rows=run(device, args.repeats),
    )
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
