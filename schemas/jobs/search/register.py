"""Registering a study: checked against the functions, created in Optuna and in the tables, all or nothing."""
import logging

import optuna

from pipeline import builder

from ...server.sql import atomic, server_lock
from ...tables import Experiment, Fabrikant, Seed
from ...tables.hashing import config_hash
from ...tables.search import Study
from .spec import StudyFileError, StudySpec
from .storage import create_schema, open_storage
from .trials import prefix

logger = logging.getLogger(__name__)


def probes(spec: StudySpec) -> list:
    """Parameter sets at the corners of the space: every parameter low, every one high, and each categorical
    choice (the others low); the configs a study would refuse are most likely among them."""
    def corner(end):
        return {p: (d.choices[0 if end == "low" else -1] if hasattr(d, "choices") else getattr(d, end))
                for p, d in spec.space.items()}

    found = [corner("low"), corner("high")]
    for path, d in spec.space.items():
        found += [{**found[0], path: choice} for choice in getattr(d, "choices", ())[1:-1]]
    return found


def check_model_builds(spec: StudySpec) -> None:
    """Build the data and the model of every probe; StudyFileError naming the parameters the model refuses."""
    dataloaders = {}
    for params in probes(spec):
        configs = spec.configs(params)
        data_key = config_hash(configs["dataset"])
        role = "dataset"
        try:
            if data_key not in dataloaders:
                dataloaders[data_key] = builder.get_data(spec.recipes["dataset"]["fn"],
                                                         {**configs["dataset"], "seed": spec.seeds[0]})
            role = "model"
            builder.get_model(spec.recipes["model"]["fn"], configs["model"], dataloaders[data_key], seed=spec.seeds[0])
        except Exception as error:
            raise StudyFileError(f"study {spec.name!r}: the {role} function refuses configs of this space, e.g. "
                                 f"{params} ({type(error).__name__}: {error})") from None


def register(spec: StudySpec, check=True) -> dict:
    """Create study ``spec.name`` in Optuna's storage and in the tables (with its experiment); returns its key.

    Registering the same study again is a no-op; a different study under a taken name is refused.
    ``check`` first builds the model at the corners of the space (see :func:`probes`).
    """
    key = {"experiment_name": spec.name}
    if check:
        check_model_builds(spec)
    stored = spec.to_dict()
    with server_lock(f"v1fabrik:studies:{Study.database}"):
        if Study & key:
            if config_hash((Study & key).fetch1("spec")) != config_hash(stored):
                raise StudyFileError(f"a different study named {spec.name!r} exists; choose another name")
            return key
        if Experiment & key:
            raise StudyFileError(f"an experiment named {spec.name!r} exists already; give the study another name")
        create_schema(prefix())
        storage = open_storage(prefix())
        if spec.name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=spec.name, storage=storage)  # left by a registration that failed
        optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
        try:
            with atomic(Study.connection):
                owner = Fabrikant.ensure_current_user()
                Seed.insert([{"seed": seed} for seed in spec.seeds], skip_duplicates=True)
                Experiment().add(spec.name, [], [], [], [], comment=spec.comment[:2000], fabrikant=owner)
                Study.insert1({**key, "study_fabrikant": owner, "n_trials": spec.n_trials, "spec": stored,
                               "study_comment": spec.comment[:2000]})
        except BaseException:
            optuna.delete_study(study_name=spec.name, storage=storage)
            raise
    logger.info("study %r registered: %d trials over %s", spec.name, spec.n_trials, ", ".join(spec.space))
    return key
