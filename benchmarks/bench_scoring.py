"""Scoring time per model: the five SENSORIUM measures (Score) against the five old score tables.

A synthetic recording with 7,776 neurons (SENSORIUM mouse 1's count; 100 test images x 10 repeats,
stored at 144 x 256, loaded at scale 0.25) and the seed notebook's model, stored as a TrainedModel
(untrained weights: scoring costs the same). Per repetition:

- old: what the five old tables computed for one model, with the model loaded once (their model
  cache): each called ``pipeline.utility.scores``' model-level functions, 8 forward passes in all;
- new: ``Score.populate(key)`` for the five measures: load, one forward pass on the test tier, the
  five measures, and the inserts (master rows and 5 x 7,776 unit rows).

It uses this checkout's database server (datajoint.json, .secrets/ or DJ_*) under a fresh schema
prefix that it drops at the end.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_scoring.py --out /tmp/scoring.json

Results: ``benchmarks/results/scoring.md``.
"""
import argparse
import json
import logging
import os
import platform
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.datasets import synthetic  # noqa: E402
from pipeline.utility import predictions, scores  # noqa: E402

logger = logging.getLogger("bench_scoring")
DATA = dict(synthetic.PRESETS["realistic"], n_neurons=7776, n_train=200)  # the train tier is never scored


def old_tables(model, dataloaders) -> None:
    """What TestCorrelation, CorrelationToAverage, FEVE, OracleCorrelation and FractionOracle computed."""
    for fn in (scores.get_correlations, scores.get_signal_correlations, scores.get_fev):
        fn(model, dataloaders, tier="test", per_neuron=False)
        fn(model, dataloaders, tier="test", as_dict=True)
    scores.get_oracles(dataloaders, tier="test", per_neuron=False)
    scores.get_oracles(dataloaders, tier="test", as_dict=True)
    scores.get_correlations(model, dataloaders, tier="test", as_dict=True)
    scores.get_oracles(dataloaders, tier="test", as_dict=True)
    scores.get_fraction_oracles(model, dataloaders, tier="test")


def counting(module, name, calls):
    """Wrap ``module.name`` so that each call appends its duration to ``calls``."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        calls.append(time.perf_counter() - start)
        return result

    setattr(module, name, timed)
    return original


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/v1fabrik-bench-scoring", help="folder for the synthetic recording")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ["V1FABRIK_ALLOWED_MODULES"] = "tests.integration"  # quick_trainer stores the untrained model
    import schemas
    from schemas.tables import scores as score_tables
    from tests.conftest import drop_schemas
    from tests.unit.models_reference import SEED_CONFIG

    folder = Path(args.data)
    existing = sorted(folder.glob("static*-Synthetic-*"))
    path = existing[0] if existing else synthetic.generate(folder, **DATA, seed=7)
    prefix = f"bench_scoring_{secrets.token_hex(3)}_"
    schemas.activate(prefix)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": machine(), "data": {**DATA, "image_size": list(DATA["image_size"]), "scale": 0.25},
              "load_before": os.getloadavg(), "old": [], "new": []}
    try:
        dataset = schemas.Dataset().add_entry("pipeline.datasets.static_loaders", {
            "paths": [str(path)], "batch_size": 128, "scale": 0.25, "include_eye_position": True})
        model = schemas.Model().add_entry("pipeline.models.stacked_core_full_gauss_readout", SEED_CONFIG)
        trainer = schemas.Trainer().add_entry("tests.integration.fabrik_functions.quick_trainer", {"epochs": 0})
        schemas.Seed.insert1({"seed": 1}, skip_duplicates=True)
        key = {**dataset, **model, **trainer, "seed": 1}
        schemas.TrainedModel.populate(key)
        passes, loads = [], []
        counting(scores, "model_predictions", passes)  # the old path's forward passes
        counting(predictions, "model_predictions", passes)  # Score's (tier_data imported it by name)
        counting(schemas.TrainedModel, "load_model", loads)
        for repeat in range(args.repeats):
            del passes[:], loads[:]
            start = time.perf_counter()
            dataloaders, net = schemas.TrainedModel().load_model(key)
            old_tables(net, dataloaders)
            result["old"].append({"seconds": time.perf_counter() - start, "load_s": loads[0],
                                  "forward_passes": len(passes), "forward_s": sum(passes)})
            del dataloaders, net, passes[:], loads[:]

            score_tables._predictions.items.clear()
            (schemas.Score.Unit & key).delete_quick()
            (schemas.Score & key).delete_quick()
            start = time.perf_counter()
            done = schemas.Score.populate(key)
            seconds = time.perf_counter() - start
            assert done["success_count"] == 5 and not done["error_list"], done
            result["new"].append({"seconds": seconds, "load_s": loads[0], "forward_passes": len(passes),
                                  "forward_s": sum(passes), "unit_rows": len(schemas.Score.Unit & key)})
            logger.info("repeat %d: old %.1f s (%d forward passes), new %.1f s (%d)", repeat,
                        result["old"][-1]["seconds"], result["old"][-1]["forward_passes"], seconds, len(passes))
        result["aggregates"] = {name: value for name, value in zip(*(schemas.Score * schemas.Measure & key).to_arrays(
            "measure_name", "value"))}
    finally:
        drop_schemas(prefix)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
