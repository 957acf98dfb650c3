"""The application layer on top of :mod:`pipeline`; its folders are its architecture:

- ``tables/``: the DataJoint tables (recipes, experiments, trained models, scores, live workers);
- ``jobs/``: one job's life in a worker (reserve, train, checkpoint, heartbeat, sweep, preempt);
- ``server/``: connection settings, portable SQL, the private local MariaDB/PostgreSQL server;
- ``cli/``: the ``v1fabrik`` commands, the demo, Slurm scripts.

Imports point one way, ``cli -> jobs -> tables -> server``. Importing this package connects to
nothing. Call ``activate()`` to connect and bind the tables::

    import schemas
    schemas.activate()            # prefix from $V1FABRIK_SCHEMA_PREFIX, else "v1fabrik_"
    from schemas import Model, Dataset, Trainer, Seed, TrainedModel
"""
import os

from . import tables
from .server import connection

DEFAULT_PREFIX = "v1fabrik_"
_bound = {}


def resolve_prefix(prefix=None) -> str:
    """The schema prefix: the argument, else $V1FABRIK_SCHEMA_PREFIX, else ``v1fabrik_``."""
    return prefix or os.environ.get("V1FABRIK_SCHEMA_PREFIX") or DEFAULT_PREFIX


def activate(prefix=None) -> str:
    """Connect to the database and bind every v1fabrik table under ``prefix``; returns the prefix."""
    prefix = resolve_prefix(prefix)
    connection.connect()
    _bound.clear()
    _bound.update(tables.bind(prefix))
    globals().update(_bound)
    return prefix


def __getattr__(name):
    if not name.startswith("_") and name[:1].isupper():
        raise AttributeError(f"schemas.{name} is not bound yet: call schemas.activate() first")
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
