"""Hyper-parameter search and ensembles on a small synthetic preset, run by real worker processes.

Two studies of the same space (TPE, one seed per trial), one with the median pruner and one without,
each run by ``v1fabrik populate --workers K``: epochs trained, best trial's test scores against the
seed config's. Then the best trial's config with 5 seeds and their ensemble, against its best member.
Uses the server of ``datajoint.json`` (``v1fabrik db up``) under a fresh schema prefix, dropped at the end.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_search.py --out benchmarks/results/search.json

Results: ``benchmarks/results/search.md``.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BASE_MODEL = dict(  # the "it learns the truth" test's small seed model (tests/unit/test_learns_truth.py)
    input_kern=5, hidden_kern=5, hidden_channels=16, layers=3, depth_separable=True, stack=-1,
    gamma_input=6.3831, gamma_readout=0.0076, gauss_type="full", shifter=True, init_sigma=0.3,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
                         "final_tanh": True})
SPACE = {
    "trainer.lr_init": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "model.gamma_input": {"type": "float", "low": 0.5, "high": 50.0, "log": True},
    "model.gamma_readout": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "model.init_sigma": {"type": "float", "low": 0.05, "high": 0.6},
    "model.hidden_channels": {"type": "int", "low": 8, "high": 32, "step": 8},
}
MEASURES = ("test_correlation", "correlation_to_average")


def populate(prefix, experiment, workers):
    """``v1fabrik populate --workers K --experiment NAME``; returns its wall time."""
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": prefix}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "schemas.cli", "populate", "--workers", str(workers),
                           "--experiment", experiment], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"populate {experiment} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def measures_of(table, restriction) -> dict:
    """``{measure name: value}`` of the one model ``restriction`` selects in a score table."""
    import schemas
    rows = (table * schemas.Measure & restriction).to_arrays("measure_name", "value")
    return {name: float(value) for name, value in zip(*rows) if name in MEASURES}


def run_study(prefix, spec, workers) -> dict:
    """Register and run one study; its trials with states, epochs and scores."""
    import optuna
    import schemas
    from schemas.jobs.search import register, storage
    from schemas.jobs.search.spec import StudySpec

    register.register(StudySpec.from_dict(spec))
    wall = populate(prefix, spec["name"], workers)
    study = optuna.load_study(study_name=spec["name"], storage=storage.storage_url(prefix, hide_password=False))
    trials = []
    for row in (schemas.Study.Trial & {"experiment_name": spec["name"]}).to_dicts():
        key = {**{k: row[k] for k in schemas.TrainedModel.primary_key if k != "seed"}, "seed": spec["seeds"][0]}
        trial = study.trials[row["trial_number"]]
        if schemas.TrainedModel & key:
            epochs = len((schemas.TrainedModel & key).fetch1("output")["history"]["epoch"])
            scores = measures_of(schemas.Score, key)
        else:
            epochs, scores = int((schemas.PrunedModel & key).fetch1("epoch")), {}
        trials.append({"number": trial.number, "state": trial.state.name, "value": trial.value, "epochs": epochs,
                       "params": trial.params, "key": key, **scores})
    best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    return {"name": spec["name"], "pruner": spec["pruner"], "wall_s": wall, "trials": trials,
            "epochs": sum(t["epochs"] for t in trials), "best": best}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="learnable")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12, help="max_iter of every trial")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ensemble", type=int, default=5, help="seeds of the best config to ensemble")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import schemas
    from pipeline.datasets import synthetic
    from tests.conftest import drop_schemas

    prefix = schemas.activate(f"bench_search_{os.getpid()}_")
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        data = synthetic.generate(Path(tempfile.mkdtemp()) / "data", seed=1, **synthetic.PRESETS[args.preset])
        dataset = {"fn": "pipeline.datasets.static_loaders",
                   "config": {"paths": [str(data)], "batch_size": 16, "include_eye_position": True}}
        trainer = {"fn": "pipeline.training.standard_trainer",
                   "config": {"lr_init": 0.009, "max_iter": args.epochs, "device": "cpu", "verbose": False}}
        base = {"dataset": dataset, "model": {"fn": "pipeline.models.stacked_core_full_gauss_readout",
                                              "config": BASE_MODEL}, "trainer": trainer}
        studies = {}
        # Different sampler seeds: a config both studies asked for would be one model, pruned or trained once.
        for sampler_seed, pruner in ((0, {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 1}),
                                     (1, {"name": "none"})):  # the same TPE settings, another sequence
            spec = {"name": f"bench-{pruner['name']}", **base, "space": SPACE, "n_trials": args.trials, "seeds": [1],
                    "sampler": {"name": "tpe", "seed": sampler_seed, "n_startup_trials": 6}, "pruner": pruner}
            studies[pruner["name"]] = run_study(prefix, spec, args.workers)
            print(f"{spec['name']}: {studies[pruner['name']]['epochs']} epochs, "
                  f"{studies[pruner['name']]['wall_s']:.0f} s", flush=True)

        keys = {role: getattr(schemas, role.capitalize())().add_entry(base[role]["fn"], base[role]["config"],
                                                                      skip_duplicates=True) for role in base}
        schemas.Experiment().add("bench-seed-config", [keys["dataset"]], [keys["model"]], [keys["trainer"]], [1])
        populate(prefix, "bench-seed-config", args.workers)
        seed_key = {**keys["dataset"], **keys["model"], **keys["trainer"], "seed": 1}
        seed_config = {"validation": float((schemas.TrainedModel & seed_key).fetch1("score")),
                       **measures_of(schemas.Score, seed_key)}

        best = studies["median"]["best"]["key"]
        seeds = list(range(1, args.ensemble + 1))
        schemas.Seed.insert([{"seed": s} for s in seeds], skip_duplicates=True)
        recipe = [{k: best[k] for k in schemas.Dataset.primary_key}, {k: best[k] for k in schemas.Model.primary_key},
                  {k: best[k] for k in schemas.Trainer.primary_key}]
        schemas.Experiment().add("bench-best-seeds", *([r] for r in recipe), seeds)
        populate(prefix, "bench-best-seeds", args.workers)
        members = (schemas.TrainedModel & schemas.Experiment.combinations("bench-best-seeds")).keys()
        ensemble_key = schemas.Ensemble().create(members, comment="benchmark: best trial, 5 seeds")
        schemas.EnsembleScore.populate(ensemble_key)
        member_scores = [measures_of(schemas.Score, m) for m in members]
        ensemble = {
            "members": len(members),
            "ensemble": measures_of(schemas.EnsembleScore, ensemble_key),
            "best_member": {m: max(s[m] for s in member_scores) for m in MEASURES},
            "mean_member": {m: float(np.mean([s[m] for s in member_scores])) for m in MEASURES},
        }
        ensemble["gain_over_best_member"] = {m: ensemble["ensemble"][m] / ensemble["best_member"][m] - 1
                                             for m in MEASURES}
    finally:
        drop_schemas(prefix)
    result = {
        "command": " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before, "load_after": os.getloadavg(), "wall_s": time.monotonic() - started,
        "preset": args.preset, "trials": args.trials, "max_epochs": args.epochs, "workers": args.workers,
        "space": SPACE, "studies": studies, "seed_config": seed_config, "ensemble": ensemble,
        "epochs_pruned_over_unpruned": studies["median"]["epochs"] / studies["none"]["epochs"],
    }
    print(json.dumps({k: result[k] for k in ("epochs_pruned_over_unpruned", "seed_config", "ensemble")}, indent=1))
    print({name: {k: s["best"].get(k) for k in ("value", *MEASURES)} for name, s in studies.items()})
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
