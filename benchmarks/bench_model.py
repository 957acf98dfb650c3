"""Model throughput: our baseline CNN against the reference modules (neuralpredictors 0.3.0), one run.

Both models are built by their builders for the seed notebook config (7538 neurons, shifter, cortex
grid predictor) and carry identical weights. Forward is eval mode under ``no_grad``; forward+backward
is training mode (sampled readout positions, BatchNorm batch statistics) on
``Σ rates + core and readout regularizers``. Images/s is the median over ``--repeats`` timed steps
after one warm-up step.

Run from the repository root (results go to ``benchmarks/results/model.md``):

    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_model.py --threads 2 --out /tmp/model.json
"""
import argparse
import json
import logging
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

logger = logging.getLogger("bench_model")
DATA_KEY = "27204-5-13"
N_NEURONS = 7538
VARIANTS = {
    "ours (default numerics)": {},
    "ours + channels_last": dict(channels_last=True),
    "ours + channels_last + bf16 autocast": dict(channels_last=True, autocast_dtype="bfloat16"),
    "ours + channels_last + compile": dict(channels_last=True, compile=True),
}


def step_seconds(model, images, pupil_center, backward, repeats):
    """Median wall time of one forward (eval, no_grad) or forward+backward (train) step."""
    model.train(backward)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if backward:
            model.zero_grad(set_to_none=True)
            rates = model(images, data_key=DATA_KEY, pupil_center=pupil_center)
            loss = rates.sum() + model.core.regularizer() + model.readout.regularizer(DATA_KEY)
            loss.backward()
        else:
            with torch.no_grad():
                model(images, data_key=DATA_KEY, pupil_center=pupil_center)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run(resolutions, variants, repeats):
    rows = []
    for (height, width), batch in resolutions:
        loaders = stand_in_loaders(DATA_KEY, N_NEURONS, (1, height, width), n_trials=2, batch_size=2)
        reference = reference_model(loaders, 42, **SEED_CONFIG)
        models = {"reference (neuralpredictors 0.3.0)": reference}
        for name in variants:
            models[name] = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG, **VARIANTS[name])
            models[name].load_state_dict(reference.state_dict())
        images, pupil_center = torch.randn(batch, 1, height, width), torch.randn(batch, 2)
        for name, model in models.items():
            for backward in (False, True):
                seconds = step_seconds(model, images, pupil_center, backward, repeats)
                row = dict(resolution=f"{height}x{width}", batch=batch, model=name,
                           step="forward+backward" if backward else "forward", images_per_s=batch / seconds)
                logger.info("%s", row)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-batch", type=int, default=8, help="batch size at 144x256")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = run([((36, 64), 128), ((144, 256), args.full_batch)], args.variants, args.repeats)
    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        command="PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_model.py "
                f"--threads {args.threads} --repeats {args.repeats} --full-batch {args.full_batch}",
        rows=rows,
    )
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
