"""The application layer: DataJoint tables, workers, the local database server and the CLI.

Importing this package connects to nothing. Call ``activate()`` to connect and bind the tables::

    import schemas
    schemas.activate()            # prefix from $V1FABRIK_SCHEMA_PREFIX, else "v1fabrik_"
    from schemas import Model, Dataset, Trainer, Seed, TrainedModel
"""
import os

DEFAULT_PREFIX = "v1fabrik_"
_bound = {}


def resolve_prefix(prefix=None) -> str:
    """The schema prefix: the argument, else $V1FABRIK_SCHEMA_PREFIX, else ``v1fabrik_``."""
    return prefix or os.environ.get("V1FABRIK_SCHEMA_PREFIX") or DEFAULT_PREFIX


def activate(prefix=None) -> str:
    """Connect to the database and bind every v1fabrik table under ``prefix``; returns the prefix."""
    from . import connection, tables

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
