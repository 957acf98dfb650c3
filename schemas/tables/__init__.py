"""The DataJoint tables, bound to the schema ``<prefix>fabrik`` race-free across workers.

- :mod:`.recipes`: Fabrikant (who), Seed, and the recipe tables Dataset, Model, Trainer, Measure;
- :mod:`.experiment`: Experiment, a named set of recipe x seed combinations;
- :mod:`.trained`: TrainedModel (with its Weights) and the Checkpoint of a running job;
- :mod:`.datainfo`: DataInfo, what each dataset's model function needs, so models open without data;
- :mod:`.scores`: Score, every measure of every trained model, and views under the old score tables' names;
- :mod:`.search`: hyper-parameter studies, their trials, and the models their pruner stopped;
- :mod:`.ensembles`: sets of trained models averaged into one model;
- :mod:`.workers`: LiveWorker and TransientFailure, the workers' own bookkeeping;
- :mod:`.jobtable`: the job tables of the computed tables, written only by a reservation's holder.

DataJoint's first-time declaration is racy when several processes declare the same tables at
once, so :func:`bind` declares the tables and their job tables while holding a database-wide
named lock, and registers the SENSORIUM measures where they are missing.
"""
import logging
import re

import datajoint as dj

from ..server.sql import server_lock
from . import scores
from .datainfo import DataInfo
from .ensembles import Ensemble
from .experiment import Experiment
from .recipes import Dataset, Fabrikant, Measure, Model, Seed, Trainer
from .scores import SCORE_TABLES
from .search import PrunedModel, Study
from .trained import Checkpoint, TrainedModel
from .workers import LiveWorker, TransientFailure

logger = logging.getLogger(__name__)


class _JobTableSeedWarning(logging.Filter):
    """Drop DataJoint 2.3.5's spurious warning about ``seed``: job tables re-declare the ``int32`` key as
    ``int`` (``integer`` on PostgreSQL)."""

    def filter(self, record):
        return not re.match(r"Native type '(int|integer)' is used in attribute 'seed'", record.getMessage())


logging.getLogger("datajoint").addFilter(_JobTableSeedWarning())

TABLES = (Fabrikant, Seed, Dataset, Trainer, Model, Measure, Experiment, DataInfo, TrainedModel, Checkpoint,
          Ensemble, *SCORE_TABLES, LiveWorker, TransientFailure, Study, PrunedModel)
COMPUTED = (DataInfo, TrainedModel, *SCORE_TABLES)


def bind(prefix: str) -> dict:
    """Declare the tables and job tables in ``<prefix>fabrik``; returns {name: bound class or measure view}."""
    name = f"{prefix}fabrik"
    with server_lock(f"v1fabrik:{name}"):
        schema = dj.Schema(name, context={t.__name__: t for t in TABLES})
        for table in TABLES:
            schema(table)
        for table in COMPUTED:
            if not table.jobs.is_declared:
                table.jobs.declare()
        scores.add_sensorium_measures()
    logger.debug("bound schema %s", name)
    return {**{t.__name__: t for t in TABLES}, **scores.views()}
