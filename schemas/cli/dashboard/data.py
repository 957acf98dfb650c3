"""What the dashboard shows, read from the tables as plain Python values (it never writes)."""
import numpy as np

from pipeline.utility.ground_truth import learned_rf_positions, rf_recovery, to_core_output_grid

from ...tables import (SCORE_TABLES, Checkpoint, DataInfo, Dataset, Ensemble, Experiment, Measure,
                       Model, PrunedModel, Study, TrainedModel, Trainer)
from ...tables.hashing import config_hash
from ...tables.recipes import TRAINED_KEY
from ...tables.scores import EnsembleScore, Score, measure_names

RECIPES = (Dataset, Model, Trainer, Measure)
QUEUE_TABLES = (DataInfo, TrainedModel, *SCORE_TABLES)


def model_id(key) -> str:
    """A short stable id of a trained model's key, used in page names."""
    return config_hash({k: key[k] for k in TRAINED_KEY})[:12]


def experiments() -> list:
    """Each experiment: name, owner, comment, combinations and how many of them are trained."""
    rows = []
    for exp in Experiment.to_dicts(order_by="experiment_name"):
        combos = Experiment.Restriction & {"experiment_name": exp["experiment_name"]}
        rows.append({"name": exp["experiment_name"], "owner": exp["experiment_fabrikant"],
                     "comment": exp["experiment_comment"], "combinations": len(combos),
                     "trained": len(TrainedModel & combos.proj())})
    return rows


def recipes() -> dict:
    """``{role: [{fn, hash, comment, config}]}`` for Dataset, Model, Trainer and Measure."""
    return {t.role: [{"fn": r[f"{t.role}_fn"], "hash": r[f"{t.role}_hash"], "comment": r[f"{t.role}_comment"],
                      "config": r[f"{t.role}_config"]} for r in t.to_dicts(order_by=f"{t.role}_fn, {t.role}_hash")]
            for t in RECIPES}


def queue() -> list:
    """Per computed table: job counts, done rows, reserved jobs (with a training job's checkpoint epoch), errors."""
    tables = []
    for table in QUEUE_TABLES:
        jobs = table.jobs
        counts = jobs.progress()
        reserved = []
        for job in jobs.reserved.to_dicts(order_by="reserved_time"):
            key = {k: job[k] for k in table.primary_key}
            epoch = (Checkpoint & key).to_arrays("epoch") if table is TrainedModel else []
            reserved.append({"key": key, "host": job["host"], "pid": job["pid"], "since": job["reserved_time"],
                             "epoch": int(epoch[0]) if len(epoch) else None})
        errors = [{"key": {k: job[k] for k in table.primary_key}, "host": job["host"], "time": job["completed_time"],
                   "message": job["error_message"]} for job in jobs.errors.to_dicts(order_by="completed_time DESC")]
        tables.append({"table": table.__name__, "pending": counts["pending"], "reserved": reserved, "errors": errors,
                       "done": len(table())})
    return tables


def flat(config, prefix="") -> dict:
    """A nested config as ``{dotted.path: value}``."""
    if isinstance(config, dict) and config:
        return {k: v for name, sub in config.items() for k, v in flat(sub, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): config}


def config_differences(keys) -> list:
    """``[{column: value}]`` per model key: the recipe config entries that differ between the keys."""
    configs = [{} for _ in keys]
    for table in (Dataset, Model, Trainer):
        r = table.role
        by_key = {(row[f"{r}_fn"], row[f"{r}_hash"]): row[f"{r}_config"] for row in table.to_dicts()}
        for config, key in zip(configs, keys):
            config[f"{r}.fn"] = key[f"{r}_fn"].rsplit(".", 1)[-1]
            config.update({f"{r}.{k}": v for k, v in flat(by_key[key[f"{r}_fn"], key[f"{r}_hash"]]).items()})
    columns = sorted({c for config in configs for c in config})
    differing = [c for c in columns if len({repr(config.get(c)) for config in configs}) > 1]
    return [{c: config.get(c) for c in differing} for config in configs]


def scores() -> tuple:
    """``(rows, measure columns, config columns)``: every trained model with its scores and config differences,
    then every ensemble with its scores (no validation score; its members in place of a config)."""
    trained = {model_id(key): key for key in TrainedModel.proj().to_dicts()}
    values = (Score * Measure.proj("measure_name")).to_dicts()
    measures = measure_names()
    rows, ids = [], list(trained)
    diffs = dict(zip(ids, config_differences([trained[i] for i in ids])))
    for i, key in trained.items():
        mine = {v["measure_name"]: v["value"] for v in values if all(v[k] == key[k] for k in TRAINED_KEY)}
        score, comment = (TrainedModel & key).fetch1("score", "comment")
        rows.append({"id": i, "seed": key["seed"], "comment": comment, "validation": float(score),
                     "scores": {m: mine.get(m) for m in measures}, "config": diffs[i], "page": True})
    rows.sort(key=lambda row: -row["validation"])
    ensemble_values = (EnsembleScore * Measure.proj("measure_name")).to_dicts()
    for ensemble in Ensemble.to_dicts(order_by="ensemble_ts"):
        mine = {v["measure_name"]: v["value"] for v in ensemble_values
                if v["ensemble_hash"] == ensemble["ensemble_hash"]}
        members = Ensemble.Member & {"ensemble_hash": ensemble["ensemble_hash"]}
        rows.append({"id": "ensemble-" + ensemble["ensemble_hash"][:12], "seed": f"ensemble of {len(members)}",
                     "comment": ensemble["ensemble_comment"], "validation": None,
                     "scores": {m: mine.get(m) for m in measures}, "page": False,
                     "config": {"members": ", ".join(model_id(k) for k in members.to_dicts())}})
    columns = sorted({c for d in diffs.values() for c in d}) + (["members"] if len(rows) > len(trained) else [])
    return rows, measures, columns


def find_model(mid: str) -> dict | None:
    """The trained model key with id ``mid``, or None."""
    return next((key for key in TrainedModel.proj().to_dicts() if model_id(key) == mid), None)


def curves(output) -> dict:
    """``{name: [values]}``: every numeric per-epoch series of a trainer's output (not booleans, not epoch numbers)."""
    series = {}
    for name, value in flat(output).items():
        if name.endswith("epoch") or not isinstance(value, (list, tuple, np.ndarray)) or len(value) < 2:
            continue
        array = np.asarray(value)
        if array.ndim == 1 and array.dtype.kind in "iuf":
            series[name] = array.astype(float).tolist()
    return series


def rf_positions(key, state_dict) -> dict:
    """``{readout: {"learned": (x, y), "true": (x, y) or None, ...}}``: where each readout looks, in its core output's
    grid; with the truth also ``r_x``, ``r_y`` (Pearson r, learned against true) and ``median_error``.

    With the dataset's ``DataInfo`` row the model is rebuilt from it (no data files) and the positions are the
    readout's mean positions plus the shifter's shift at the mean eye position, for any readout (also those
    whose positions come from cortical coordinates); a synthetic dataset's row also has the true RF centres,
    mapped onto the same grid. Without the row: the stored ``*._mu`` positions, and no truth.
    """
    info = (DataInfo & {k: key[k] for k in Dataset.primary_key}).to_arrays("data_info")
    if not len(info):
        return {name.removesuffix("._mu"): {"learned": _xy(array), "true": None}
                for name, array in state_dict.items() if name.endswith("._mu") and array.shape[-1] == 2}
    model = TrainedModel().load_model(key, include_dataloader=False)
    positions = {}
    for data_key, item in info[0].items():
        learned = learned_rf_positions(model, data_key)
        view = positions[f"readout.{data_key}"] = {"learned": _xy(learned), "true": None}
        if item.get("true_rf_centers") is not None:
            true = to_core_output_grid(model, item["dims"][item["fields"][0]][1:], item["true_rf_centers"])
            view.update(true=_xy(true), **rf_recovery(learned, true))
    return positions


def _xy(array) -> tuple:
    array = np.asarray(array).reshape(-1, 2)
    return array[:, 0].tolist(), array[:, 1].tolist()


def model(key) -> dict:
    """One trained model: recipes, provenance, training curves, per measure its stored aggregate (the measure's
    own, e.g. FEVE over the neurons with FEV >= 0.15) and per-neuron values, RF positions."""
    row = (TrainedModel & key).fetch1()
    units, aggregates = {}, {}
    for name in (Measure & (Score & key)).to_arrays("measure_name", order_by="measure_name"):
        measure = Measure & {"measure_name": name}
        values = (Score.Unit & key & measure).to_arrays("unit_value")
        units[name] = [float(v) for v in values if v is not None]
        aggregates[name] = (Score & key & measure).fetch1("value")
    weights = (TrainedModel.Weights & key).to_arrays("state_dict")
    return {"key": key, "score": float(row["score"]), "comment": row["comment"], "host": row["host"],
            "device": row["device"], "duration": float(row["duration"]), "code_version": row["code_version"],
            "trained": row["trainedmodel_ts"], "fabrikant": row["fabrikant_name"],
            "configs": {t.role: (t & key).fetch1(f"{t.role}_config") for t in (Dataset, Model, Trainer)},
            "curves": curves(row["output"]), "units": units, "aggregates": aggregates,
            "rf": rf_positions(key, weights[0]) if len(weights) else {}}


def studies() -> list:
    """Each study with its trials in order: number, params, mean score over trained seeds, pruned or not."""
    result = []
    for study in Study.to_dicts(order_by="experiment_name"):
        name = study["experiment_name"]
        trials = []
        for trial in (Study.Trial & {"experiment_name": name}).to_dicts(order_by="trial_number"):
            recipe = {k: trial[k] for k in TRAINED_KEY if k != "seed"}
            score = (TrainedModel & recipe & (Experiment.Restriction & {"experiment_name": name})).to_arrays("score")
            trials.append({"number": trial["trial_number"], "params": trial["params"],
                           "score": float(np.mean(score)) if len(score) else None,
                           "pruned": bool(PrunedModel & recipe)})
        result.append({"name": name, "owner": study["study_fabrikant"], "n_trials": study["n_trials"],
                       "comment": study["study_comment"], "trials": trials})
    return result
