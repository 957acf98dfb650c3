"""The pipeline's ``v1fabrik`` subcommands: synth, add, register, init, worker, populate, status, scores.

Each ``_add_<name>(commands)`` adds a subparser whose ``run(args)`` calls the layer below.
"""
import json
import logging
from pathlib import Path

import yaml

from pipeline.datasets import synthetic

from .. import activate, tables
from ..jobs.populate import populate
from ..jobs.worker import Worker
from ..tables.scores import measures_frame, scores_frame
from . import experiment_file
from .scores import format_scores
from .status import report

logger = logging.getLogger(__name__)


def _config(text: str) -> dict:
    """A JSON object given inline or as the path of a JSON/YAML file."""
    path = Path(text)
    if path.suffix in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return yaml.safe_load(path.read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config is neither a file nor valid JSON ({error})") from None


def _add_add(commands):
    add = commands.add_parser("add", help="register a dataset, model, trainer or measure function with its config, "
                                          "or a seed")
    kinds = add.add_subparsers(dest="kind", required=True)
    for kind in ("dataset", "model", "trainer", "measure"):
        parser = kinds.add_parser(kind, help=f"register a {kind} function and config")
        parser.add_argument("fn", help="dotted function path, e.g. pipeline.models.stacked_core_full_gauss_readout")
        parser.add_argument("--config", default="{}", help="JSON object, or a .json/.yaml file")
        parser.add_argument("--comment", default="")
        parser.set_defaults(run=_run_add)
    measure = kinds.choices["measure"]
    measure.add_argument("--tier", choices=tables.Measure.TIERS, default="test", help="the tier it scores")
    measure.add_argument("--name", help="its column in `v1fabrik scores` (default: the function's name)")
    seed = kinds.add_parser("seed", help="register random seeds")
    seed.add_argument("seeds", type=int, nargs="+")
    seed.set_defaults(run=_run_add_seed)


def _run_add(args) -> int:
    activate()
    config = _config(args.config)
    if args.kind == "measure":
        key = tables.Measure().add_entry(args.fn, config, tier=args.tier, name=args.name, comment=args.comment,
                                         skip_duplicates=True)
    else:
        table = {"dataset": tables.Dataset, "model": tables.Model, "trainer": tables.Trainer}[args.kind]
        key = table().add_entry(args.fn, config, comment=args.comment, skip_duplicates=True)
    print(json.dumps(key))
    return 0


def _run_add_seed(args) -> int:
    activate()
    tables.Seed.insert([{"seed": s} for s in args.seeds], skip_duplicates=True)
    return 0


def _add_register(commands):
    register = commands.add_parser("register", help="register the recipes, seeds and experiment of a YAML file")
    register.add_argument("file")
    register.add_argument("--join", action="store_true",
                          help="add to an experiment of the same name that somebody else made")
    register.set_defaults(run=_run_register)


def _run_register(args) -> int:
    activate()
    result = experiment_file.register(args.file, join=args.join)
    logger.info("experiment %r: %d combinations registered", result["name"], result["combinations"])
    return 0


def _add_init(commands):
    init = commands.add_parser("init", help="declare every table and job table (once, under a database lock)")
    init.set_defaults(run=_run_init)


def _run_init(args) -> int:
    prefix = activate()
    logger.info("tables and job tables of %sfabrik are declared", prefix)
    return 0


def _worker_options(parser):
    parser.add_argument("--experiment", help="only work on this experiment's combinations")
    parser.add_argument("--max-jobs", type=int, help="stop after this many training jobs")


def _add_worker(commands):
    worker = commands.add_parser("worker", help="train and score pending models (one process per GPU)")
    worker.add_argument("--device", help="cuda:0, cpu, ... (default: the trainer config decides)")
    worker.add_argument("--wait", action="store_true", help="keep polling for new work")
    _worker_options(worker)
    worker.set_defaults(run=_run_worker)


def _run_worker(args) -> int:
    done = Worker(device=args.device, experiment=args.experiment, max_jobs=args.max_jobs, wait=args.wait).run()
    return 0 if not done.failed else 2


def _add_populate(commands):
    populate = commands.add_parser("populate", help="run K workers on this machine and wait for them")
    populate.add_argument("--workers", type=int, help="number of workers (default: one per GPU, or 1)")
    populate.add_argument("--devices", nargs="+", help="one device per worker, e.g. cuda:0 cuda:1")
    _worker_options(populate)
    populate.set_defaults(run=_run_populate)


def _run_populate(args) -> int:
    return populate(args.workers, args.devices, experiment=args.experiment, max_jobs=args.max_jobs)


def _add_status(commands):
    status = commands.add_parser("status", help="pending, reserved, error and done counts per table; latest errors")
    status.add_argument("--errors", type=int, default=5, help="how many recent errors to show")
    status.set_defaults(run=_run_status)


def _run_status(args) -> int:
    activate()
    print(report(args.errors))
    return 0


def _add_scores(commands):
    scores = commands.add_parser("scores", help="one row per trained model: comments, seed and every measure")
    scores.add_argument("--experiment")
    scores.add_argument("--format", choices=("table", "csv"), default="table")
    scores.set_defaults(run=_run_scores)


def _run_scores(args) -> int:
    activate()
    print(format_scores(scores_frame(args.experiment), args.format))
    if args.format == "table":
        print("\nmeasures:\n" + measures_frame().to_string(index=False))
    return 0


def _add_synth(commands):
    synth = commands.add_parser("synth", help="write a synthetic V1 dataset in the SENSORIUM file layout")
    synth.add_argument("out", help="folder to create")
    synth.add_argument("--preset", default="default", help="size preset (pipeline.datasets.synthetic.PRESETS)")
    for flag, name in [("--neurons", "n_neurons"), ("--train", "n_train"), ("--validation", "n_validation"),
                       ("--test-images", "n_test_images"), ("--repeats", "n_repeats"), ("--seed", "seed")]:
        synth.add_argument(flag, dest=name, type=int)
    synth.add_argument("--image-size", dest="image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    synth.set_defaults(run=_synth)


def _synth(args) -> int:
    if args.preset not in synthetic.PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {', '.join(synthetic.PRESETS)}")
    options = dict(synthetic.PRESETS[args.preset])
    names = ["n_neurons", "n_train", "n_validation", "n_test_images", "n_repeats", "seed", "image_size"]
    options.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    if "image_size" in options:
        options["image_size"] = tuple(options["image_size"])
    synthetic.generate(args.out, **options)
    return 0


COMMANDS = [_add_synth, _add_add, _add_register, _add_init, _add_worker, _add_populate, _add_status, _add_scores]
