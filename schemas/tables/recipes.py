"""Who, seeds and the recipe tables (Dataset, Model, Trainer, Measure).

A recipe row is a function registered for the table's role (:mod:`pipeline.registry`) and its
config, keyed by ``(x_fn, x_hash)`` where ``x_hash`` is the canonical typed hash of
:mod:`schemas.tables.hashing` (for a Measure, of its tier and config). A model config may start from
a trained model's core: ``core_from`` names that TrainedModel's key, and ``Model.CoreFrom`` records it.
"""
import inspect
import logging

import datajoint as dj

from pipeline import builder
from pipeline.utility import measures

from ..server.sql import atomic
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


def _recipe_definition(r: str, extra: str = "", fabrikant: str = "") -> str:
    return f"""
    # {r} functions and their configs
    {r}_fn : varchar(128)       # dotted import path of the {r} function
    {r}_hash : char(32)         # md5 of the canonical typed config (schemas.hashing)
    ---
    {r}_config : <blob>         # keyword arguments of the {r} function
    ->{fabrikant} Fabrikant.proj({r}_fabrikant="fabrikant_name")
    {r}_comment = "" : varchar(256)
    {r}_ts = CURRENT_TIMESTAMP : datetime
    {extra}
    """


class _Recipe:
    """Shared behaviour of the recipe tables; ``role`` names the attribute prefix."""

    role = None

    def add_entry(self, fn, config, comment="", fabrikant=None, skip_duplicates=False) -> dict:
        """Register ``fn`` with ``config``; returns the key.

        ``fn`` is a dotted path or the function itself; it must be registered for this table's role.
        Raises DuplicateEntryError if the entry exists, unless ``skip_duplicates``.
        """
        row = self._row(fn, config, comment, config_hash(config))
        return self._add(row, fabrikant or Fabrikant.ensure_current_user(), skip_duplicates)

    def _row(self, fn, config, comment, hashed) -> dict:
        """The row of ``fn`` and ``config`` (checked), keyed by the hash ``hashed``; without its fabrikant."""
        r = self.role
        name = builder.fn_name(fn)
        builder.resolve_fn(name, r)
        if not isinstance(config, dict):
            raise TypeError(f"{r} config must be a dict of keyword arguments, got {type(config).__name__}")
        if len(comment) > 256:
            raise ValueError(f"{r} comment is {len(comment)} characters long; the limit is 256")
        return {f"{r}_fn": name, f"{r}_hash": hashed, f"{r}_config": config, f"{r}_comment": comment}

    def _add(self, row, fabrikant, skip_duplicates) -> dict:
        """Insert ``row`` unless its key exists (DuplicateEntryError unless ``skip_duplicates``); returns the key."""
        r = self.role
        key = {k: row[k] for k in (f"{r}_fn", f"{r}_hash")}
        if key in self:
            if not skip_duplicates:
                raise DuplicateEntryError(f"{r} {key[f'{r}_fn']} with this config already exists as {key}")
            return key
        self.insert1({**row, f"{r}_fabrikant": fabrikant}, skip_duplicates=skip_duplicates)
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


CORE_FROM = "core_from"
TRAINED_KEY = ("dataset_fn", "dataset_hash", "model_fn", "model_hash", "trainer_fn", "trainer_hash", "seed")


def core_parent(model_config) -> dict | None:
    """The TrainedModel key a model config's ``core_from`` names, or None; ValueError if it is not such a key."""
    parent = model_config.get(CORE_FROM)
    if parent is None:
        return None
    if not isinstance(parent, dict) or set(parent) != set(TRAINED_KEY):
        raise ValueError(f"{CORE_FROM} must be a TrainedModel key with exactly {list(TRAINED_KEY)}, "
                         f"got {parent!r:.200}")
    return dict(parent)


class Model(_Recipe, dj.Manual):
    role = "model"
    definition = _recipe_definition("model")

    class CoreFrom(dj.Part):
        definition = """
        # the trained model (Dataset x Model x Trainer x Seed) whose core this model starts from
        -> master
        ---
        -> Dataset.proj(core_dataset_fn="dataset_fn", core_dataset_hash="dataset_hash")
        -> Model.proj(core_model_fn="model_fn", core_model_hash="model_hash")
        -> Trainer.proj(core_trainer_fn="trainer_fn", core_trainer_hash="trainer_hash")
        -> Seed.proj(core_seed="seed")
        """

    def add_entry(self, fn, config, comment="", fabrikant=None, skip_duplicates=False) -> dict:
        """Register ``fn`` with ``config`` (see ``_Recipe.add_entry``), and its ``core_from`` parent if it has one.

        The parent's recipes and seed must exist; it need not be trained yet (its children wait for it).
        """
        parent = core_parent(config) if isinstance(config, dict) else None
        if parent is None:
            return super().add_entry(fn, config, comment, fabrikant, skip_duplicates)
        if "pretrained_core" not in inspect.signature(builder.resolve_fn(fn, "model")).parameters:
            raise ValueError(f"model function {builder.fn_name(fn)} takes no pretrained_core, so it cannot start "
                             f"from a trained core ({CORE_FROM})")
        for table in (Dataset, Model, Trainer, Seed):
            part = {name: parent[name] for name in table.primary_key}
            if not table & part:
                raise ValueError(f"{CORE_FROM} names a {table.__name__} that does not exist: {part}")
        with atomic(self.connection):
            key = super().add_entry(fn, config, comment, fabrikant, skip_duplicates)
            self.CoreFrom.insert1({**key, **{f"core_{name}": value for name, value in parent.items()}},
                                  skip_duplicates=True)
        return key

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


class Measure(_Recipe, dj.Manual):
    """Measures that score every trained model on one tier (contract in :mod:`pipeline.utility.measures`).

    ``measure_hash`` hashes the tier with the config, so one function and config on two tiers are two
    measures. ``measure_name`` is the measure's column in scores frames and the name of its
    ``schemas.tables.scores.measure_view``. Measures v1fabrik ships have no fabrikant.
    """

    role = "measure"
    TIERS = ("validation", "test", "final_test")
    definition = _recipe_definition("measure", fabrikant="[nullable]", extra="""
    measure_name : varchar(64)  # its column in scores frames; unique
    measure_tier : varchar(16)  # the tier it scores: validation, test or final_test
    unique index (measure_name)
    """)

    @staticmethod
    def hash(config, tier) -> str:
        """The ``measure_hash`` of ``config`` on ``tier``."""
        return config_hash({"config": config, "tier": tier})

    def add_entry(self, fn, config=None, tier="test", name=None, comment="", fabrikant=None,
                  skip_duplicates=False) -> dict:
        """Register the measure ``fn`` with ``config`` on ``tier``; returns the key.

        Args:
            name: its column name, unique among measures; default: the function's name, plus ``_<tier>``
                off the test tier.
        """
        row = self.row(fn, config or {}, tier, name, comment)
        return self._add(row, fabrikant or Fabrikant.ensure_current_user(), skip_duplicates)

    def row(self, fn, config, tier, name=None, comment="") -> dict:
        """The checked row (without fabrikant) of a measure; refuses a name another measure has."""
        if tier not in self.TIERS:
            raise ValueError(f"measure tier {tier!r} is not one of {', '.join(self.TIERS)}")
        row = self._row(fn, config, comment, self.hash(config, tier))
        measures.check_config(row["measure_fn"], builder.resolve_fn(row["measure_fn"], "measure"), config)
        name = name or row["measure_fn"].rpartition(".")[2] + ("" if tier == "test" else f"_{tier}")
        if not name.isidentifier() or len(name) > 64:
            raise ValueError(f"measure name {name!r} must be a Python identifier of at most 64 characters")
        # Compared here, not with `- key`: DataJoint 2.3.5 negates only the first attribute of a dict.
        for taken in (self & {"measure_name": name}).to_dicts():
            if (taken["measure_fn"], taken["measure_hash"]) != (row["measure_fn"], row["measure_hash"]):
                raise ValueError(f"measure name {name!r} is taken by {taken['measure_fn']} {taken['measure_config']} "
                                 f"on the {taken['measure_tier']} tier; choose another name")
        return {**row, "measure_name": name, "measure_tier": tier}
