"""Transfer benchmark: a core trained on three recordings, frozen and transferred to a fourth.

    OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_transfer.py --out /tmp/transfer.json

Four synthetic recordings of one simulated population family (``PRESETS[--preset]``, generator
seeds 101-104: different neurons, retinotopy, eye and images per recording, the same Gabor feature
space). A model with one core and three readouts is trained on recordings 1-3; its core is then frozen
(``pretrained_core``, ``freeze_core=True``) under a new readout and shifter for recording 4, trained on
10 %, 25 % and 100 % of recording 4's training trials (``image_n``, ``image_base_seed=1``), against the
same model trained from scratch on the same trials. Reported: test correlation (single trial, mean
over neurons) per fraction and mode, and seconds per epoch (training plus the validation pass).
Results are recorded in ``benchmarks/results/transfer.md``.
"""
import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import PRESETS, generate
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from pipeline.utility.scores import get_correlations

MODEL = dict(
    input_kern=5, hidden_kern=5, hidden_channels=16, layers=3, depth_separable=True, stack=-1,
    gamma_input=6.3831, gamma_readout=0.0076, gauss_type="full", shifter=True, init_sigma=0.3,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
                         "final_tanh": True},
)
RECORDING_SEEDS = (101, 102, 103, 104)


def recordings(preset, data_dir):
    """The four recordings, generated once into ``data_dir``."""
    folder = Path(data_dir) / preset
    paths = []
    for seed in RECORDING_SEEDS:
        found = sorted(folder.glob(f"static*-Synthetic-s{seed}"))
        paths.append(found[0] if found else generate(folder, **PRESETS[preset], seed=seed))
    return [str(path) for path in paths]


def train(paths, seed, args, image_n=None, **model_options):
    """Train the model on ``paths``; returns (model, dataloaders, the run's numbers)."""
    dataloaders = static_loaders(paths, batch_size=args.batch_size, include_eye_position=True, image_n=image_n,
                                 image_base_seed=1 if image_n else None)
    model = stacked_core_full_gauss_readout(dataloaders, seed, **MODEL, **model_options)
    started = time.perf_counter()
    score, output, _ = standard_trainer(model, dataloaders, seed, max_iter=args.max_iter, lr_init=args.lr,
                                        device="cpu", verbose=False)
    history = output["history"]
    return model, dataloaders, {
        "train_trials": sum(len(loader.sampler) for loader in dataloaders["train"].values()),
        "validation_corr": score,
        "test_corr": float(get_correlations(model, dataloaders, tier="test", per_neuron=False)),
        "epochs": len(history["epoch"]),
        "seconds_per_epoch": float(np.mean(history["seconds"])),
        "wall_s": time.perf_counter() - started,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="learnable")
    parser.add_argument("--data-dir", default="/tmp/v1f_transfer")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="model seeds (one run per mode and seed)")
    parser.add_argument("--max-iter", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.009)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    paths = recordings(args.preset, args.data_dir)
    result = {"args": vars(args), "machine": platform.platform(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_before": os.getloadavg(), "runs": []}

    parent, _, numbers = train(paths[:3], 0, args)
    core = {name: value.numpy() for name, value in parent.core.state_dict().items()}
    result["pretrain"] = numbers
    print(f"core trained on 3 recordings: {numbers}", flush=True)

    n_train = PRESETS[args.preset]["n_train"]
    for fraction in args.fractions:
        image_n = None if fraction == 1 else round(fraction * n_train)
        for seed in args.seeds:
            for mode, options in (("transfer, frozen core", dict(pretrained_core=core, freeze_core=True)),
                                  ("from scratch", {})):
                _, _, numbers = train(paths[3:], seed, args, image_n=image_n, **options)
                result["runs"].append({"fraction": fraction, "mode": mode, "seed": seed, **numbers})
                print(result["runs"][-1], flush=True)
    result["load_after"] = os.getloadavg()

    print("\n| train trials of rec. 4 | transfer, frozen core: test corr | from scratch: test corr | ratio |"
          "\n|---|---|---|---|")
    for fraction in args.fractions:
        runs = [r for r in result["runs"] if r["fraction"] == fraction]
        means = {mode: np.mean([r["test_corr"] for r in runs if r["mode"] == mode])
                 for mode in ("transfer, frozen core", "from scratch")}
        trials = runs[0]["train_trials"]
        print(f"| {fraction:.0%} ({trials}) | {means['transfer, frozen core']:.3f} | {means['from scratch']:.3f} | "
              f"{means['transfer, frozen core'] / means['from scratch']:.2f}x |")
    print("\n| mode | seconds per epoch (mean over runs at 100 %) |\n|---|---|")
    for mode in ("transfer, frozen core", "from scratch"):
        seconds = [r["seconds_per_epoch"] for r in result["runs"] if r["fraction"] == 1 and r["mode"] == mode]
        print(f"| {mode} | {np.mean(seconds):.2f} |" if seconds else f"| {mode} | not run |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
