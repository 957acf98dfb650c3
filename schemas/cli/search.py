"""``v1fabrik search`` (register a study, show its trials or its storage URL) and ``v1fabrik ensemble``."""
import json

from .. import activate
from ..jobs.search import register, storage, trials
from ..jobs.search.spec import StudySpec
from ..tables import Ensemble


def add_search(commands):
    search = commands.add_parser("search", help="register a hyper-parameter study that the workers then run")
    search.add_argument("file", nargs="?", help="study file (YAML; see schemas/jobs/search/spec.py)")
    search.add_argument("--storage-url", action="store_true",
                        help="print the Optuna storage URL (without the password), e.g. for optuna-dashboard")
    search.add_argument("--trials", metavar="STUDY", help="print the trials of a study")
    search.set_defaults(run=_run_search)


def _run_search(args) -> int:
    prefix = activate()
    if args.storage_url:
        print(storage.storage_url(prefix))
        return 0
    if args.trials:
        frame = trials.load(args.trials).study.trials_dataframe(attrs=("number", "state", "value", "params"))
        print(frame.to_string(index=False) if len(frame) else f"study {args.trials!r} has no trials yet")
        return 0
    if not args.file:
        raise ValueError("give a study file, --trials STUDY or --storage-url")
    spec = StudySpec.load(args.file)
    register.register(spec)
    print(f"study {spec.name!r}: {spec.n_trials} trials of {len(spec.seeds)} seed(s) over {', '.join(spec.space)}; "
          f"run it with `v1fabrik populate --workers K --experiment {spec.name!r}` or workers anywhere")
    return 0


def add_ensemble(commands):
    ensemble = commands.add_parser("ensemble", help="register the ensemble of an experiment's best trained models")
    ensemble.add_argument("--experiment", required=True)
    ensemble.add_argument("--top", type=int, required=True, help="how many models, by validation score")
    ensemble.add_argument("--comment", default="")
    ensemble.set_defaults(run=_run_ensemble)


def _run_ensemble(args) -> int:
    activate()
    key = Ensemble().create_top(args.experiment, args.top, comment=args.comment)
    print(json.dumps(key))
    return 0


COMMANDS = [add_search, add_ensemble]
