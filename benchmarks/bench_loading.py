"""Loader throughput: v1fabrik ``static_loaders`` against the reference FileTreeDataset chain.

Each measurement runs in a fresh subprocess (so nothing is cached in-process and peak RSS is its
own) on the same files: build the loaders, then iterate the train tier twice. "cold" = building plus
the first epoch (the reference reads every file then; "ours-memmap" is measured once the
one-file-per-field store it keeps in the cache exists); "warm" = the second epoch (the reference's
in-memory cache is full). The OS page cache is warm for both (files were read before). CPU seconds
(process time, all threads) are reported beside wall seconds: on a shared machine they are the
steadier measure. Every measurement records the 1-minute load average before it; the
implementations take turns, dataset by dataset and thread count by thread count, for ``--rounds``
rounds, so the reference and ours see the same background load.

    .venv/bin/python benchmarks/bench_loading.py DATASET [DATASET ...] [--scales 0.25 1] [--threads 2 1]
    .venv/bin/python benchmarks/bench_loading.py --synthetic DIR --image-dtypes uint8 float32 float64 --n-neurons 1000

``--synthetic DIR`` writes (once) the realistic preset, seed 42, with each image dtype into DIR and
measures those. Prints markdown tables; record them in benchmarks/results/loading-*.md.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("reference", "ours", "ours-memmap")


def measure(impl: str, dataset: str, scale: float, batch_size: int, threads: int) -> dict:
    """Run inside the subprocess: time building + two train epochs of one implementation."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
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
    return {"items": n, "cold_s": epochs[0], "warm_s": epochs[1], "cold_cpu_s": cpus[0], "warm_cpu_s": cpus[1],
            "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux keeps ``ru_maxrss`` across fork and exec, so a measuring
    process would report the parent's peak (e.g. of writing the synthetic data); VmHWM is its own."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def synthetic_datasets(folder: Path, dtypes, n_neurons: int) -> list:
    """The realistic preset (seed 42) with each image dtype under ``folder``, written if missing."""
    sys.path.insert(0, str(ROOT))
    from pipeline.datasets.synthetic import PRESETS, generate

    paths = []
    for dtype in dtypes:
        parent = folder / f"n{n_neurons}-{dtype}"
        existing = sorted(parent.glob("static*-Synthetic-s42"))
        paths.append(existing[0] if existing else generate(
            parent, seed=42, image_dtype=dtype, **{**PRESETS["realistic"], "n_neurons": n_neurons}))
    return [str(p) for p in paths]


def image_dtype(dataset: str) -> str:
    sys.path.insert(0, str(ROOT))
    from pipeline.datasets.filetree import FileTree

    return str(FileTree(dataset).layout("images")[1])


def run(impl, dataset, scale, args, threads, env) -> dict:
    """One measurement in a fresh process with ``threads`` torch (and OpenMP) threads."""
    command = [sys.executable, __file__, dataset, "--scales", str(scale), "--batch-size", str(args.batch_size),
               "--threads", str(threads), "--impl", impl]
    env = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load = os.getloadavg()
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*")
    parser.add_argument("--synthetic", type=Path, help="write and measure the realistic preset here")
    parser.add_argument("--image-dtypes", nargs="+", default=["uint8"], help="with --synthetic")
    parser.add_argument("--n-neurons", type=int, default=5000, help="with --synthetic")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(measure(args.impl, args.datasets[0], args.scales[0], args.batch_size, args.threads[0])))
        return
    datasets = args.datasets + (synthetic_datasets(args.synthetic, args.image_dtypes, args.n_neurons)
                                if args.synthetic else [])
    env = dict(os.environ, V1FABRIK_CACHE=tempfile.mkdtemp(prefix="bench-loading-"))
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; batch size {args.batch_size}\n")
    print("| round | images | threads | scale | implementation | items | cold s (CPU s) | warm epoch s (CPU s) "
          "| peak RSS MiB | load avg 1 min |\n|---|---|---|---|---|---|---|---|---|---|")
    results, stored = {}, set()
    for round_ in range(1, args.rounds + 1):
        for dataset in datasets:
            dtype = image_dtype(dataset)
            for scale in args.scales:
                for threads in args.threads:
                    for impl in IMPLS:
                        if impl == "ours-memmap" and dataset not in stored:  # write the store; measure the next
                            run(impl, dataset, scale, args, threads, env)
                            stored.add(dataset)
                        r = run(impl, dataset, scale, args, threads, env)
                        results.setdefault((dtype, threads, scale, impl), []).append(r)
                        print(f"| {round_} | {dtype} | {threads} | {scale} | {impl} | {r['items']} | "
                              f"{r['cold_s']:.2f} ({r['cold_cpu_s']:.2f}) | {r['warm_s']:.2f} ({r['warm_cpu_s']:.2f}) | "
                              f"{r['peak_rss_mib']:.0f} | {r['load'][0]:.2f} |", flush=True)
    summarise(results)
    shutil.rmtree(env["V1FABRIK_CACHE"])


def summarise(results: dict) -> None:
    """Per image dtype, thread count and scale: each round's cold speed-up and the medians."""
    print("\n| images | threads | scale | implementation | cold × per round, wall | median cold ×, wall (CPU) "
          "| median warm ×, wall | peak RSS MiB, reference / ours |\n|---|---|---|---|---|---|---|---|")
    for (dtype, threads, scale, impl), rows in results.items():
        if impl == "reference":
            continue
        ref = results[(dtype, threads, scale, "reference")]
        ratio = lambda key: [r[key] / o[key] for r, o in zip(ref, rows)]  # noqa: E731
        per_round = ", ".join(f"{x:.1f}" for x in ratio("cold_s"))
        print(f"| {dtype} | {threads} | {scale} | {impl}/reference | {per_round} | "
              f"**{statistics.median(ratio('cold_s')):.1f}×** ({statistics.median(ratio('cold_cpu_s')):.1f}×) | "
              f"{statistics.median(ratio('warm_s')):.1f}× | "
              f"{statistics.median(r['peak_rss_mib'] for r in ref):.0f} / "
              f"{statistics.median(o['peak_rss_mib'] for o in rows):.0f} |")


if __name__ == "__main__":
    main()
