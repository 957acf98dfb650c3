"""Who, seeds and the three recipe tables (Dataset, Model, Trainer).

A recipe row is a function registered for the table's role (:mod:`pipeline.registry`) and its
config, keyed by ``(x_fn, x_hash)`` where ``x_hash`` is the canonical typed hash of
:mod:`schemas.tables.hashing`.
"""
import logging

import datajoint as dj

from pipeline import builder

from .hashing import config_hash

logger = logging.getLogger(__name__)


class DuplicateEntryError(ValueError):
    """A recipe with this function and config already exists."""


class FabrikantConflict(ValueError):
    """A fabrikant name is taken by another database user."""


class Fabrikant(dj.Manual):
    definition = """
    # people who register recipes and run workers
    fabrikant_name : varchar(32)
    ---
    full_name = "" : varchar(128)
    email = "" : varchar(128)
    affiliation = "" : varchar(128)
    dj_username : varchar(64)     # database user, without the @host part
    unique index (dj_username)
    """

    @staticmethod
    def database_user() -> str:
        """The connected database user, without the ``@host`` part."""
        return dj.conn().get_user().split("@")[0]

    @classmethod
    def get_current_user(cls):
        """The fabrikant name of the connected database user, or None if not registered."""
        names = (cls & {"dj_username": cls.database_user()}).to_arrays("fabrikant_name")
        return names[0] if len(names) else None

    @classmethod
    def ensure_current_user(cls) -> str:
        """The current user's fabrikant name, registering the database user under its own name if needed.

        Refuses (FabrikantConflict) when that name already belongs to another database user, so that
        nothing is ever attributed to somebody else.
        """
        name = cls.get_current_user()
        if name is not None:
            return name
        user = cls.database_user()
        cls.insert1({"fabrikant_name": user[:32], "dj_username": user}, skip_duplicates=True)
        name = cls.get_current_user()  # skip_duplicates: another process of ours may have won the insert
        if name is None:
            owner = (cls & {"fabrikant_name": user[:32]}).fetch1("dj_username")
            raise FabrikantConflict(
                f"fabrikant {user[:32]!r} belongs to database user {owner!r}, not to you ({user!r}): register "
                f"yourself under a free name with Fabrikant.insert1({{'fabrikant_name': ..., 'dj_username': {user!r}}})")
        logger.info("registered database user %r as fabrikant %r", user, name)
        return name


class Seed(dj.Manual):
    definition = """
    # random seeds, one model is trained per seed
    seed : int32
    """


def _recipe_definition(r: str) -> str:
    return f"""
    # {r} functions and their configs
    {r}_fn : varchar(128)       # dotted import path of the {r} function
    {r}_hash : char(32)         # md5 of the canonical typed config (schemas.hashing)
    ---
    {r}_config : <blob>         # keyword arguments of the {r} function
    -> Fabrikant.proj({r}_fabrikant="fabrikant_name")
    {r}_comment = "" : varchar(256)
    {r}_ts = CURRENT_TIMESTAMP : datetime
    """


class _Recipe:
    """Shared behaviour of Dataset, Model and Trainer; ``role`` names the attribute prefix."""

    role = None

    def add_entry(self, fn, config, comment="", fabrikant=None, skip_duplicates=False) -> dict:
        """Register ``fn`` with ``config``; returns the key.

        ``fn`` is a dotted path or the function itself; it must be registered for this table's role.
        Raises DuplicateEntryError if the entry exists, unless ``skip_duplicates``.
        """
        r = self.role
        name = builder.fn_name(fn)
        builder.resolve_fn(name, r)
        if not isinstance(config, dict):
            raise TypeError(f"{r} config must be a dict of keyword arguments, got {type(config).__name__}")
        if len(comment) > 256:
            raise ValueError(f"{r} comment is {len(comment)} characters long; the limit is 256")
        key = {f"{r}_fn": name, f"{r}_hash": config_hash(config)}
        if key in self:
            if not skip_duplicates:
                raise DuplicateEntryError(f"{r} {name} with this config already exists as {key}")
            return key
        row = {
            **key,
            f"{r}_config": config,
            f"{r}_fabrikant": fabrikant or Fabrikant.ensure_current_user(),
            f"{r}_comment": comment,
        }
        self.insert1(row, skip_duplicates=skip_duplicates)
        return key

    def fn_config(self, key=None):
        """``(fn_name, config)`` of the entry ``key`` (or of the one row this table is restricted to)."""
        r = self.role
        row = (self & key).fetch1(f"{r}_fn", f"{r}_config") if key is not None else self.fetch1(f"{r}_fn", f"{r}_config")
        return row[0], row[1]


class Dataset(_Recipe, dj.Manual):
    role = "dataset"
    definition = _recipe_definition("dataset")

    def get_dataloader(self, key=None, seed=None):
        """Build the dataloaders of ``key``; ``seed`` is passed unless the config sets one."""
        fn, config = self.fn_config(key)
        if seed is not None and "seed" not in config:
            config = {**config, "seed": seed}
        return builder.get_data(fn, config)


class Model(_Recipe, dj.Manual):
    role = "model"
    definition = _recipe_definition("model")

    def build_model(self, dataloaders=None, seed=None, key=None):
        """Build the model of ``key`` for ``dataloaders``."""
        fn, config = self.fn_config(key)
        return builder.get_model(fn, config, dataloaders=dataloaders, seed=seed)


class Trainer(_Recipe, dj.Manual):
    role = "trainer"
    definition = _recipe_definition("trainer")

    def get_trainer(self, key=None):
        """The trainer function of ``key`` with its config bound."""
        fn, config = self.fn_config(key)
        return builder.get_trainer(fn, config)
