"""Model throughput: our baseline CNN against the reference modules (neuralpredictors 0.3.0), one run.

Both models are built by their builders for the seed notebook config (7538 neurons, shifter, cortex
grid predictor) and carry identical weights. Forward is eval mode under ``no_grad``; forward+backward
is training mode (sampled readout positions, BatchNorm batch statistics) on
``Σ rates + core and readout regularizers``. Images/s is the median over ``--repeats`` timed steps
after one warm-up step; the models take turns step by step, so on a shared machine they see the same
load (the load average is recorded before and after each setting).

Variants of ours: the default (fused CPU kernels, ``pipeline.models.cpu_kernels``), the same model
with torch's operators only (the code before the kernels), and ``compile=True`` (the warm-up step,
which compiles, is reported as ``first_step_s``). Throughput is also given as GFLOP/s: the forward
pass's convolution and matmul FLOPs (torch's FLOP counter), × 3 for a training step (its counts of
grouped-convolution backward passes are wrong), per second, beside a 4096² float32 matmul on the
same threads. The process keeps freed memory as the trainer does
(``pipeline.utility.allocator``; ``--default-malloc`` to measure without).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py --threads 1 2 --out benchmarks/results/model-run8.json

writes the JSON and a markdown table beside it (``.md``); see ``benchmarks/README.md`` §2.
"""
import argparse
import json
import logging
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models import cpu_kernels, stacked_core_full_gauss_readout
from pipeline.utility.allocator import keep_freed_memory
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

logger = logging.getLogger("bench_model")
DATA_KEY = "27204-5-13"
N_NEURONS = 7538
REFERENCE = "reference (neuralpredictors 0.3.0)"
VARIANTS = {
    "ours (default)": {},
    "ours, torch operators only": {},  # run with cpu_kernels.switched_off()
    "ours + compile": dict(compile=True),
    "ours + bf16 autocast": dict(autocast_dtype="bfloat16"),
}
SETTINGS = {"36x64": ((36, 64), 128), "144x256": ((144, 256), 8)}


def train_step(model, images, pupil_center):
    model.zero_grad(set_to_none=True)
    rates = model(images, data_key=DATA_KEY, pupil_center=pupil_center)
    (rates.sum() + model.core.regularizer() + model.readout.regularizer(DATA_KEY)).backward()


def eval_step(model, images, pupil_center):
    with torch.no_grad():
        model(images, data_key=DATA_KEY, pupil_center=pupil_center)


def timed(name, step, model, images, pupil_center):
    """Seconds of one step; the torch-operators variant runs with the kernels switched off."""
    start = time.perf_counter()
    if name == "ours, torch operators only":
        with cpu_kernels.switched_off():
            step(model, images, pupil_center)
    else:
        step(model, images, pupil_center)
    return time.perf_counter() - start


def matmul_gflops(size=4096, repeats=3):
    """GFLOP/s of a float32 ``size``² matmul on the current torch threads (median of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(seconds) / 1e9


def forward_flops(model, images, pupil_center):
    """Convolution and matmul FLOPs of one forward pass (torch's FLOP counter; element-wise work not counted)."""
    with FlopCounterMode(display=False) as counter:
        eval_step(model.eval(), images, pupil_center)
    return counter.get_total_flops()


def run_setting(threads, resolution, variants, repeats):
    """Rows for one thread count and resolution: every model and step, with load and matmul rate."""
    torch.set_num_threads(threads)
    (height, width), batch = SETTINGS[resolution]
    load_before, matmul_before = os.getloadavg()[0], matmul_gflops()
    loaders = stand_in_loaders(DATA_KEY, N_NEURONS, (1, height, width), n_trials=2, batch_size=2)
    reference = reference_model(loaders, 42, **SEED_CONFIG)
    models = {REFERENCE: reference}
    for name in variants:
        models[name] = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG, **VARIANTS[name])
        models[name].load_state_dict(reference.state_dict())
    images, pupil_center = torch.randn(batch, 1, height, width), torch.randn(batch, 2)
    rows, flops_forward = [], forward_flops(reference, images, pupil_center)
    for step_name, step, training in (("forward", eval_step, False), ("forward+backward", train_step, True)):
        flops = flops_forward * (3 if training else 1)  # backward = 2 × forward, the usual convention
        first = {name: timed(name, step, model.train(training), images, pupil_center) for name, model in models.items()}
        times = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(timed(name, step, model, images, pupil_center))
        for name, seconds in times.items():
            median = statistics.median(seconds)
            rows.append(dict(threads=threads, resolution=resolution, batch=batch, model=name, step=step_name,
                             images_per_s=batch / median, step_s=median, first_step_s=first[name],
                             gflop_per_s=flops / median / 1e9, step_gflop=flops / 1e9))
            logger.info("%s", rows[-1])
    matmul = max(matmul_before, matmul_gflops())
    for row in rows:
        reference_row = next(r for r in rows if r["model"] == REFERENCE and r["step"] == row["step"])
        row.update(x_reference=row["images_per_s"] / reference_row["images_per_s"], matmul_gflop_per_s=matmul,
                   load_average=[load_before, os.getloadavg()[0]])
    return rows


def markdown(record):
    """The rows as a markdown table, with the run's command, machine and date."""
    lines = [f"# Model throughput, {record['date']}", "", f"`{record['command']}`", "",
             f"Machine: {record['machine']}; {record['versions']}", "",
             "| threads | resolution, batch | step | model | images/s | × reference | GFLOP/s (of matmul) "
             "| first step s | load average before, after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['threads']} | {r['resolution']}, {r['batch']} | {r['step']} | {r['model']} "
                     f"| {r['images_per_s']:.2f} | {r['x_reference']:.2f}× | {r['gflop_per_s']:.1f} "
                     f"({r['gflop_per_s'] / r['matmul_gflop_per_s']:.0%} of {r['matmul_gflop_per_s']:.0f}) "
                     f"| {r['first_step_s']:.1f} | {r['load_average'][0]:.1f}, {r['load_average'][1]:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        default=["ours (default)", "ours, torch operators only"],
                        help="compile and bf16 autocast are opt-in here (bf16 is emulated without AVX512-BF16/AMX)")
    parser.add_argument("--resolutions", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--default-malloc", action="store_true", help="do not keep freed memory (glibc's default)")
    parser.add_argument("--out", required=True, help="JSON file; the markdown table goes beside it (.md)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.default_malloc:
        keep_freed_memory()
    rows = [row for threads in args.threads for resolution in args.resolutions
            for row in run_setting(threads, resolution, args.variants, args.repeats)]
    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, cpu capability "
                f"{torch.backends.cpu.get_cpu_capability()}, "
                + ("glibc's default malloc" if args.default_malloc else "freed memory kept"),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        command="PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py "
                f"--threads {' '.join(map(str, args.threads))} --repeats {args.repeats} "
                f"--resolutions {' '.join(args.resolutions)} --variants {' '.join(repr(v) for v in args.variants)}"
                + (" --default-malloc" if args.default_malloc else ""),
        rows=rows,
    )
    Path(args.out).write_text(json.dumps(record, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(record))


if __name__ == "__main__":
    main()
