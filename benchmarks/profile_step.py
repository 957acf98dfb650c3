"""Where one training step of our seed notebook model spends its time: torch.profiler, self time per operator.

``--before`` profiles the code as it was before issue 21 (torch's operators only, glibc's default
malloc); the default profiles the current one (fused CPU kernels, freed memory kept). One torch thread
by default, so that self times are not inflated by threads waiting for each other on a shared machine.

    PYTHONPATH=. .venv/bin/python benchmarks/profile_step.py [--before] --out benchmarks/results/profile-after.md
"""
import argparse
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_model import DATA_KEY, N_NEURONS, SETTINGS, train_step
from pipeline.models import cpu_kernels, stacked_core_full_gauss_readout
from pipeline.utility.allocator import keep_freed_memory
from tests.unit.models_reference import SEED_CONFIG, stand_in_loaders


def profile_table(resolution, rows):
    """Markdown rows of the ``rows`` operators with the most self CPU time in one step (after two warm-up steps)."""
    (height, width), batch = SETTINGS[resolution]
    loaders = stand_in_loaders(DATA_KEY, N_NEURONS, (1, height, width), n_trials=2, batch_size=2)
    model = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG).train()
    images, pupil_center = torch.randn(batch, 1, height, width), torch.randn(batch, 2)
    for _ in range(2):
        train_step(model, images, pupil_center)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        train_step(model, images, pupil_center)
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"### {resolution}, batch {batch}: {total / 1e6:.2f} s self time in one step", "",
             "| operator | input shapes | calls | self ms | share |", "|---|---|---|---|---|"]
    for event in events[:rows]:
        shapes = str(event.input_shapes).replace("|", "/")[:90]
        lines.append(f"| {event.key} | `{shapes}` | {event.count} | {event.self_cpu_time_total / 1e3:.1f} "
                     f"| {event.self_cpu_time_total / total:.1%} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", action="store_true", help="torch's operators only, glibc's default malloc")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--resolutions", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.before:
        keep_freed_memory()
    load = os.getloadavg()[0]
    state = ("before issue 21: torch operators only, default malloc" if args.before
             else "fused CPU kernels, freed memory kept")
    lines = [f"# Profile of one training step ({state})", "",
             f"`PYTHONPATH=. .venv/bin/python benchmarks/profile_step.py{' --before' if args.before else ''} "
             f"--threads {args.threads} --out {args.out}`", "",
             f"{datetime.now(timezone.utc).isoformat(timespec='minutes')}; {platform.machine()}, "
             f"{os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}; "
             f"load average {load:.1f} at start. "
             "Self time is wall time inside each operator: on a loaded machine all rows stretch alike.", ""]
    for resolution in args.resolutions:
        if args.before:
            with cpu_kernels.switched_off():
                lines += profile_table(resolution, args.rows)
        else:
            lines += profile_table(resolution, args.rows)
        lines.append("")
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
