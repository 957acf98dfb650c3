"""Model throughput: our baseline CNN against the reference modules (neuralpredictors 0.3.0), one run.

Both models are built by their builders for the seed notebook config (7538 neurons, shifter, cortex
grid predictor) and carry identical weights. Forward is eval mode under ``no_grad``; forward+backward
is training mode (sampled readout positions, BatchNorm batch statistics) on
``Σ rates + core and readout regularizers``. Images/s is the median over ``--repeats`` timed steps
after one warm-up step; the models take turns step by step.

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


def train_step(model, images, pupil_center):
    model.zero_grad(set_to_none=True)
    rates = model(images, data_key=DATA_KEY, pupil_center=pupil_center)
    (rates.sum() + model.core.regularizer() + model.readout.regularizer(DATA_KEY)).backward()


def eval_step(model, images, pupil_center):
    with torch.no_grad():
        model(images, data_key=DATA_KEY, pupil_center=pupil_center)


def run(resolutions, variants, repeats):
    """Images/s per (resolution, model, step). Models take turns step by step, so on a shared machine
    they see the same background load."""
    rows = []
    for (height, width), batch in resolutions:
        loaders = stand_in_loaders(DATA_KEY, N_NEURONS, (1, height, width), n_trials=2, batch_size=2)
        reference = reference_model(loaders, 42, **SEED_CONFIG)
        models = {"reference (neuralpredictors 0.3.0)": reference}
        for name in variants:
            models[name] = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG, **VARIANTS[name])
            models[name].load_state_dict(reference.state_dict())
        images, pupil_center = torch.randn(batch, 1, height, width), torch.randn(batch, 2)
        for step_name, step, training in (("forward", eval_step, False), ("forward+backward", train_step, True)):
            times = {name: [] for name in models}
            for model in models.values():  # warm-up (and compilation)
                step(model.train(training), images, pupil_center)
            for _ in range(repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    step(model, images, pupil_center)
                    times[name].append(time.perf_counter() - start)
            for name, seconds in times.items():
                row = dict(resolution=f"{height}x{width}", batch=batch, model=name, step=step_name,
                           images_per_s=batch / statistics.median(seconds))
                logger.info("%s", row)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-batch", type=int, default=8, help="batch size at 144x256")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        default=[name for name in VARIANTS if "bf16" not in name],
                        help="bf16 autocast is opt-in here: without native bf16 (AVX512-BF16/AMX) it is emulated")
    parser.add_argument("--resolutions", nargs="+", choices=["36x64", "144x256"], default=["36x64", "144x256"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    settings = {"36x64": ((36, 64), 128), "144x256": ((144, 256), args.full_batch)}
    rows = run([settings[name] for name in args.resolutions], args.variants, args.repeats)
    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        command="PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py "
                f"--threads {args.threads} --repeats {args.repeats} --full-batch {args.full_batch} "
                f"--resolutions {' '.join(args.resolutions)} "
                f"--variants {' '.join(repr(v) for v in args.variants)}",
        rows=rows,
    )
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
