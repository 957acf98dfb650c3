"""Ensembles: trained models of one dataset whose predictions are averaged, loaded and scored like one model.

An ensemble's key is the canonical hash of its sorted member keys, so the same members always make
the same ensemble; ``Ensemble().load_model(key)`` returns a :class:`pipeline.models.ensemble.EnsembleModel`
called exactly like its members.
"""
import datajoint as dj

from pipeline.models.ensemble import EnsembleModel

from ..server.sql import atomic
from .experiment import Experiment
from .hashing import config_hash
from .recipes import Dataset, Fabrikant
from .trained import TrainedModel


class Ensemble(dj.Manual):
    definition = """
    # trained models of one dataset whose predictions are averaged
    ensemble_hash : char(32)      # schemas.tables.hashing.config_hash of the sorted member keys
    ---
    -> Dataset
    -> Fabrikant.proj(ensemble_fabrikant="fabrikant_name")
    ensemble_comment = "" : varchar(256)
    ensemble_ts = CURRENT_TIMESTAMP : datetime
    """

    class Member(dj.Part):
        definition = """
        # one trained model of the ensemble
        -> master
        -> TrainedModel
        """

    def create(self, keys, comment="", fabrikant=None) -> dict:
        """Register the ensemble of the trained models ``keys`` (dicts or a query) in one transaction; returns its key.

        The members must be at least two trained models of the same dataset; creating the same ensemble
        again returns its key.
        """
        members = self._members(keys)
        key = {"ensemble_hash": config_hash(members)}
        if len(comment) > 256:
            raise ValueError(f"ensemble comment is {len(comment)} characters long; the limit is 256")
        with atomic(self.connection):
            if key not in self:
                dataset = {k: members[0][k] for k in Dataset.primary_key}
                self.insert1({**key, **dataset, "ensemble_fabrikant": fabrikant or Fabrikant.ensure_current_user(),
                              "ensemble_comment": comment})
                self.Member.insert([{**key, **member} for member in members])
        return key

    def create_top(self, experiment: str, n: int, comment="") -> dict:
        """The ensemble of the ``n`` trained models of ``experiment`` with the best validation score."""
        trained = (TrainedModel & Experiment.combinations(experiment)).to_dicts(order_by="score DESC")
        if len(trained) < n:
            raise ValueError(f"experiment {experiment!r} has {len(trained)} trained models; --top {n} needs {n}")
        top = [{k: row[k] for k in TrainedModel.primary_key} for row in trained[:n]]
        return self.create(top, comment=comment or f"top {n} of {experiment} by validation score")

    def member_keys(self, key=None) -> list:
        """The TrainedModel keys of the ensemble ``key`` (or of the one row this table is restricted to)."""
        key = self._one_key(key)
        return (TrainedModel & (self.Member & key)).keys(order_by=TrainedModel.primary_key)

    def load_model(self, key=None, include_dataloader=True):
        """Rebuild ``(dataloaders, model)`` of the ensemble ``key`` (``model`` alone without dataloaders).

        ``model`` is an :class:`~pipeline.models.ensemble.EnsembleModel` of the members with their stored
        weights; the dataloaders are the dataset's, built with the first member's seed.
        """
        members = self.member_keys(key)
        model = EnsembleModel([TrainedModel().load_model(m, include_dataloader=False) for m in members])
        if not include_dataloader:
            return model
        return Dataset().get_dataloader(members[0], seed=members[0]["seed"]), model

    def _one_key(self, key):
        keys = (self & key).keys() if key is not None else self.keys()
        if len(keys) != 1:
            raise ValueError(f"{len(keys)} ensembles match {key}; give a key that selects exactly one")
        return keys[0]

    @staticmethod
    def _members(keys) -> list:
        """The distinct TrainedModel keys of ``keys``, sorted; ValueError naming what does not fit."""
        restrictions = keys.keys() if hasattr(keys, "keys") and not isinstance(keys, dict) else list(keys)
        members = {}
        for restriction in restrictions:
            found = (TrainedModel & restriction).keys()
            if len(found) != 1:
                raise ValueError(f"{restriction} selects {len(found)} trained models; each member must be exactly one")
            members[tuple(sorted(found[0].items()))] = found[0]
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two distinct trained models, got {len(members)}")
        datasets = {(m["dataset_fn"], m["dataset_hash"]) for m in members.values()}
        if len(datasets) > 1:
            raise ValueError(f"ensemble members must share one dataset; these come from {len(datasets)}: "
                             f"{sorted(datasets)}")
        return [members[k] for k in sorted(members)]
