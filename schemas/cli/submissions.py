"""``v1fabrik export`` (a trained model's SENSORIUM submission file) and ``v1fabrik evaluate`` (a file's scores).

The format and its checks are :mod:`pipeline.utility.submission`'s.
"""
import json
import logging

from pipeline.utility import submission
from pipeline.utility.predictions import tier_data

from .. import activate
from ..tables import Experiment, TrainedModel

logger = logging.getLogger(__name__)


def select_trained_model(key=None, experiment=None, seed=None) -> dict:
    """The key of the one TrainedModel matching a JSON restriction ``key``, an experiment and a seed.

    Refuses attributes TrainedModel lacks and selections of no or several models, listing the candidates.
    """
    query = TrainedModel.proj("comment")
    if key:
        try:
            restriction = json.loads(key)
        except json.JSONDecodeError as error:
            raise ValueError(f"the key {key!r} is not a JSON object ({error})") from None
        unknown = sorted(set(restriction) - set(TrainedModel.primary_key)) if isinstance(restriction, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"the key must be a JSON object of {', '.join(TrainedModel.primary_key)}; "
                             f"got {key!r}")
        query &= restriction
    if experiment:
        query &= Experiment.combinations(experiment)
    if seed is not None:
        query &= {"seed": seed}
    rows = query.to_dicts(order_by=["model_fn", "model_hash", "seed"], limit=6)
    if len(rows) == 1:
        return {k: rows[0][k] for k in TrainedModel.primary_key}
    if not rows:
        raise ValueError("no trained model matches; check --experiment, --seed and the key "
                         "(`v1fabrik scores` lists the models)")
    listed = "; ".join(f"seed {r['seed']} model_hash {r['model_hash']} trainer_hash {r['trainer_hash']} "
                       f"({r['comment']})" for r in rows[:5])
    raise ValueError(f"{len(query)} trained models match, give --seed or a JSON key that selects one: {listed}")


def export(key: dict, tier: str, out=None, data_key=None, device="cpu"):
    """Write the SENSORIUM submission of the trained model ``key`` on ``tier``; returns the file's path."""
    if tier not in submission.TIERS:
        raise ValueError(f"a submission is for the tier 'test' or 'final_test', not {tier!r}")
    dataloaders, model = TrainedModel().load_model(key)
    keys = list(dataloaders.get(tier, {}))
    if data_key is None and len(keys) > 1:
        raise ValueError(f"the model has the data keys {', '.join(keys)}: choose one with --data-key")
    if data_key is not None and data_key not in keys:
        raise ValueError(f"the model has no {tier} data for data key {data_key!r} (it has {', '.join(keys) or 'none'})")
    data = tier_data(model.to(device), dataloaders, tier, device)
    trials = data[data_key or keys[0]]
    path = submission.write_submission(out or submission.default_name(tier), trials)
    logger.info("wrote %s: %d %s trials x %d neurons of data key %s", path, len(trials.trial_idx), tier,
                len(trials.unit_ids), trials.data_key)
    return path


def _add_export(commands):
    parser = commands.add_parser("export", help="write a trained model's predictions as a SENSORIUM submission CSV")
    parser.add_argument("key", nargs="?",
                        help='JSON restriction of TrainedModel, e.g. \'{"model_hash": "...", "seed": 1}\'')
    parser.add_argument("--experiment", help="a trained model of this experiment")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tier", choices=submission.TIERS, default="test")
    parser.add_argument("--out", help="file to write (default: sensorium's submission_file_<tier>.csv)")
    parser.add_argument("--data-key", help="the dataset to predict, for models of several")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    activate()
    key = select_trained_model(args.key, args.experiment, args.seed)
    print(export(key, args.tier, args.out, args.data_key, args.device))
    return 0


def _add_evaluate(commands):
    parser = commands.add_parser("evaluate", help="SENSORIUM scores of a submission file against a dataset's responses")
    parser.add_argument("file", help="the submission CSV")
    parser.add_argument("--dataset", required=True, help="the dataset folder (or .zip) with the responses")
    parser.add_argument("--tier", choices=submission.TIERS, help="default: the tier of the file's trials")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    result = submission.evaluate(args.file, args.dataset, args.tier)
    if args.format == "json":
        print(json.dumps(result))
        return 0
    print(f"{args.file}: {result['trials']} {result['tier']} trials x {result['neurons']} neurons")
    for name in submission.SCORES:
        print(f"{name:<26}{result[name]!r}")
    return 0


COMMANDS = [_add_export, _add_evaluate]
