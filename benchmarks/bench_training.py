"""Training benchmark: does the seed model learn the synthetic ground truth, and how does our trainer
compare with the reference trainer logic (neuralpredictors 0.3.0 model, early stopping, LongCycler)?

Run from the repository root, in the background on a shared machine:

    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_training.py --preset realistic --init-sigma 0.1 \
        --init-mu-range 0.3 --checkpoint /tmp/realistic.npz --out /tmp/realistic.json
    PYTHONPATH=. nice -n 19 .venv/bin/python benchmarks/bench_training.py --preset default --reference --out /tmp/default.json

Both trainers see the same dataset and loaders, the seed model config (SENSORIUM notebook), batch 128,
scale 0.25 for 144x256 presets, lr 0.009, 4 LR-decay rounds (the SENSORIUM training notebooks).
With ``--checkpoint`` a stopped or killed run continues where it left off when started again with the
same arguments (the trainer resumes bit-exactly on CPU, tests/unit/test_trainer.py; the wall time
includes the restart).
Results are recorded in ``benchmarks/results/training.md``.
"""
import argparse
import importlib
import json
import logging
import math
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
from pipeline.training.checkpoints import state_from_arrays, state_to_arrays
from pipeline.utility.ground_truth import truth_scores
from pipeline.utility.seeding import set_random_seed
from tests.reference import np_ref
from tests.unit.models_reference import SEED_CONFIG, reference_model

logger = logging.getLogger("bench_training")
TRAINER_CONFIG = dict(lr_init=0.009, lr_decay_steps=4, patience=5, tolerance=1e-6)


def dataset(preset, data_dir, seed):
    """Generate the preset once (cached in ``data_dir``); returns its folder."""
    folder = Path(data_dir) / preset
    existing = [p for p in sorted(folder.glob("static*-Synthetic-s*")) if p.is_dir()]
    if existing:
        return existing[0]
    return generate(folder, **PRESETS[preset], seed=seed)


def reference_trainer(model, dataloaders, seed, device, max_iter, lr_init, lr_decay_steps, patience, tolerance):
    """sensorium's standard_trainer loop, assembled from neuralpredictors 0.3.0 (spec section 3).

    Returns (final validation correlation, epochs, trajectory): every evaluation of the objective
    with its wall time since the start.
    """
    started = time.perf_counter()
    trajectory = []
    early_stopping = importlib.import_module("neuralpredictors.training.early_stopping").early_stopping
    cyclers = importlib.import_module("neuralpredictors.training.cyclers")
    np_corr = np_ref.measures.np_functions.corr
    model.to(device)
    set_random_seed(seed)
    model.train()
    criterion = np_ref.measures.modules.PoissonLoss(avg=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_init)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.3, patience=patience, threshold=tolerance, threshold_mode="abs", min_lr=1e-4
    )

    def validation_correlation(m):  # sensorium get_correlations: float32 numpy, NaN -> 0
        correlations = []
        for key, loader in dataloaders["validation"].items():
            target, output = [], []
            with torch.no_grad():
                for batch in loader:
                    fields = {k: v.to(device) for k, v in batch._asdict().items()}
                    output.append(m(fields["images"], data_key=key, **fields).cpu())
                    target.append(batch.responses)
            c = np_corr(torch.cat(target).numpy(), torch.cat(output).numpy(), axis=0)
            correlations.append(np.where(np.isnan(c), 0, c))
        score = float(np.mean(np.hstack(correlations)))
        trajectory.append({"seconds": time.perf_counter() - started, "validation_corr": score})
        return score

    train = dataloaders["train"]
    epochs = 0
    for epochs, _ in early_stopping(
        model, validation_correlation, interval=1, patience=patience, max_iter=max_iter, tolerance=tolerance,
        scheduler=scheduler, lr_decay_steps=lr_decay_steps,
    ):
        optimizer.zero_grad()
        for batch_no, (key, batch) in enumerate(cyclers.LongCycler(train)):
            fields = {k: v.to(device) for k, v in batch._asdict().items()}
            scale = math.sqrt(len(train[key].dataset) / fields["images"].shape[0])
            regularizers = model.core.regularizer() + model.readout.regularizer(key)
            loss = scale * criterion(model(fields["images"], data_key=key, **fields), fields["responses"]) + regularizers
            loss.backward()
            if (batch_no + 1) % len(train) == 0:
                optimizer.step()
                optimizer.zero_grad()
        logger.info("reference epoch %d done", epochs)
    model.eval()
    return validation_correlation(model), epochs, trajectory


def run(which, args, path, device, report):
    """Train one model; ``report(progress)`` is called after every epoch of ours with the trajectory so far."""
    dataloaders = static_loaders([str(path)], batch_size=args.batch_size, include_eye_position=True, scale=args.scale,
                                 include_behavior=args.include_behavior)
    build = stacked_core_full_gauss_readout if which == "ours" else reference_model
    readout_init = {name: getattr(args, name) for name in ("init_sigma", "init_mu_range") if getattr(args, name)}
    model = build(dataloaders, args.seed, **SEED_CONFIG, **readout_init)
    started = time.perf_counter()
    if which == "ours":
        trajectory = []

        def progress(epoch, model, state, **_):
            nonlocal started
            if epoch is None:  # the trainer asks for a state to resume from
                if not (args.checkpoint and args.checkpoint.exists()):
                    return None
                with np.load(args.checkpoint, allow_pickle=False) as saved:
                    resume = state_from_arrays(dict(saved))
                trajectory.extend(json.loads(args.out.read_text())["runs"][-1]["trajectory"])
                started -= trajectory[-1]["seconds"]  # wall time goes on from the saved epoch
                logger.info("resuming from %s after epoch %d", args.checkpoint, trajectory[-1]["epoch"])
                return resume
            if args.checkpoint:
                partial = args.checkpoint.with_suffix(".partial.npz")
                np.savez(partial, **state_to_arrays(state))
                os.replace(partial, args.checkpoint)
            point = {"epoch": epoch, "seconds": time.perf_counter() - started,
                     "validation_corr": state["history"]["validation_corr"][-1], "lr": state["history"]["lr"][-1]}
            if args.truth_every and epoch % args.truth_every == 0:
                point.update(truth_scores(model, dataloaders, path, device))
            trajectory.append(point)
            logger.info("%s", point)
            report({"trainer": which, "trajectory": trajectory})
            return None

        score, output, _ = standard_trainer(
            model, dataloaders, args.seed, device=device, max_iter=args.max_iter, verbose=False, cb=progress,
            **TRAINER_CONFIG,
        )
        epochs = len(output["history"]["epoch"])
    else:
        score, epochs, trajectory = reference_trainer(model, dataloaders, args.seed, device, args.max_iter,
                                                      **TRAINER_CONFIG)
    seconds = time.perf_counter() - started
    result = {"trainer": which, "validation_corr": score, "epochs": epochs, "seconds": seconds,
              "trajectory": trajectory}
    if which == "ours":
        result.update(truth_scores(model, dataloaders, path, device))
    logger.info("%s", {k: v for k, v in result.items() if k != "trajectory"})
    return result


def first_reaching(result, score):
    """Wall seconds until the run of ``result`` first evaluated a validation correlation of at least ``score`` (None: never).

    The run's end counts as an evaluation of its final (restored best) state. ``score`` is lowered by
    the early-stopping tolerance, as the two trainers score in float32 and float64.
    """
    points = result["trajectory"] + [{"seconds": result["seconds"], "validation_corr": result["validation_corr"]}]
    target = score - TRAINER_CONFIG["tolerance"]
    return next((point["seconds"] for point in points if point["validation_corr"] >= target), None)


def time_to_score(ours, reference):
    """Seconds each trainer needed to first reach the reference's final validation correlation, and their ratio."""
    target = reference["validation_corr"]
    seconds = {"ours": first_reaching(ours, target), "reference": first_reaching(reference, target)}
    ratio = None if None in seconds.values() else seconds["ours"] / seconds["reference"]
    logger.info("time to the reference's score %.5f: %s, ratio %s", target, seconds, ratio)
    return {"target_validation_corr": target, "seconds": seconds, "ours_over_reference": ratio}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--data-dir", default="/tmp/v1fabrik-bench")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--scale", type=float, default=None, help="default: 0.25 for 144x256 presets, else 1")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--init-sigma", type=float, help="readout init; default: the seed notebook's (1.0). "
                        "The SENSORIUM training notebooks use 0.1 (spec section 2)")
    parser.add_argument("--init-mu-range", type=float, help="readout init; the training notebooks use 0.3")
    parser.add_argument("--include-behavior", action="store_true", help="load behaviour as image channels "
                        "(the seed config does not); the model can then see the truth's behavioural gain")
    parser.add_argument("--reference", action="store_true", help="also train with the reference trainer logic")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--truth-every", type=int, default=1, help="test-tier truth scores every N epochs (0: at the end)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--checkpoint", type=Path, help="ours: save the trainer state here after every epoch, and "
                        "resume from it (and from --out's trajectory) when it exists, e.g. after a stopped run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.scale is None:
        args.scale = 0.25 if PRESETS[args.preset]["image_size"][0] == 144 else 1.0
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    path = dataset(args.preset, args.data_dir, args.seed)
    record = {
        "command": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "runs": [],
    }
    def report(partial):  # the unfinished run's trajectory, so that a stopped benchmark still leaves numbers
        args.out.write_text(json.dumps(record | {"runs": record["runs"] + [partial]}, indent=1))

    for which in ["ours"] + ["reference"] * args.reference:
        record["runs"].append(run(which, args, path, device, report))
        args.out.write_text(json.dumps(record, indent=1))
    if args.reference:
        record["time_to_reference_score"] = time_to_score(*record["runs"])
        args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
