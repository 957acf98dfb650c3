"""Loader throughput: v1fabrik ``static_loaders`` against the reference FileTreeDataset chain.

Each measurement runs in a fresh subprocess (so nothing is cached in-process and peak RSS is its
own) on the same files: build the loaders, then iterate the train tier twice. "cold" = building plus
the first epoch (the reference reads every file then; "ours-memmap" is measured on its second run,
when the one-file-per-field store it keeps in the cache exists); "warm" = the second epoch (the reference's
in-memory cache is full). The OS page cache is warm for both (files were read before). CPU seconds
(process time, all threads) are reported beside wall seconds: on a shared machine they are the
steadier measure.

    .venv/bin/python benchmarks/bench_loading.py DATASET [--scales 0.25 1] [--batch-size 128]

Prints a markdown table; record it in benchmarks/results/loading.md.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("reference", "ours", "ours-memmap")


def measure(impl: str, dataset: str, scale: float, batch_size: int) -> dict:
    """Run inside the subprocess: time building + two train epochs of one implementation."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.manual_seed(0)
    config = dict(batch_size=batch_size, include_behavior=True, include_eye_position=True, scale=scale)
    start, cpu = time.perf_counter(), time.process_time()
    if impl.startswith("ours"):
        from pipeline.datasets import static_loaders

        loaders = static_loaders([dataset], memmap=impl == "ours-memmap", **config)
    else:
        from tests.unit.test_loaders_parity import reference_loaders

        loaders = reference_loaders(dataset, **config)
    loader = next(iter(loaders["train"].values()))
    epochs, cpus = [], []
    for _ in range(2):
        n = sum(len(batch.responses) for batch in loader)
        epochs.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
    return {"impl": impl, "scale": scale, "items": n, "cold_s": epochs[0], "warm_s": epochs[1],
            "cold_cpu_s": cpus[0], "warm_cpu_s": cpus[1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(measure(args.impl, args.dataset, args.scales[0], args.batch_size)))
        return
    import torch

    env = dict(os.environ, V1FABRIK_CACHE=tempfile.mkdtemp(prefix="bench-loading-"))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {platform.python_version()}")
    print("\n| scale | implementation | items | cold s (CPU s) | items/s cold | warm epoch s (CPU s) "
          "| items/s warm | peak RSS MiB |\n|---|---|---|---|---|---|---|---|")
    for scale in args.scales:
        rows = {}
        for impl in IMPLS:
            command = [sys.executable, __file__, args.dataset, "--scales", str(scale), "--batch-size",
                       str(args.batch_size), "--impl", impl]
            if impl == "ours-memmap":  # a first run writes the store into the cache; measure the next
                subprocess.run(command, check=True, capture_output=True, env=env)
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            rows[impl] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {scale} | {impl} | {r['items']} | {r['cold_s']:.2f} ({r['cold_cpu_s']:.2f}) | "
                  f"{r['items'] / r['cold_s']:.0f} | {r['warm_s']:.2f} ({r['warm_cpu_s']:.2f}) | "
                  f"{r['items'] / r['warm_s']:.0f} | {r['peak_rss_mib']:.0f} |")
        ref = rows["reference"]
        for impl in IMPLS[1:]:
            ours = rows[impl]
            print(f"| {scale} | speed-up {impl}/reference, wall (CPU) | | "
                  f"{ref['cold_s'] / ours['cold_s']:.1f}x ({ref['cold_cpu_s'] / ours['cold_cpu_s']:.1f}x) | | "
                  f"{ref['warm_s'] / ours['warm_s']:.1f}x ({ref['warm_cpu_s'] / ours['warm_cpu_s']:.1f}x) | | |")
    shutil.rmtree(env["V1FABRIK_CACHE"])


if __name__ == "__main__":
    main()
