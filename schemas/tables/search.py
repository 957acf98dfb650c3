"""Hyper-parameter studies: an experiment whose combinations a sampler chooses, one trial at a time.

A trial is an ordinary recipe: its Dataset, Model and Trainer rows (hashed like any other) joined to
the study's experiment with the study's seeds. ``Study.Trial`` records the trial's Optuna number and
parameters against those keys, so ``TrainedModel * Study.Trial`` gives every trained trial with
its parameters. A model that the study's pruner stopped stores no weights: ``PrunedModel`` keeps
its history. The study itself (sampler state, intermediate values) lives in Optuna's storage
(:mod:`schemas.jobs.search`).
"""
import datajoint as dj

from .experiment import Experiment
from .recipes import Dataset, Fabrikant, Model, Seed, Trainer


class Study(dj.Manual):
    definition = """
    # a hyper-parameter search: its trials join the experiment of the same name
    -> Experiment
    ---
    -> Fabrikant.proj(study_fabrikant="fabrikant_name")
    n_trials : int32              # trials to finish (complete or pruned)
    spec : <blob>                 # the checked study file (schemas.jobs.search.spec.StudySpec.to_dict)
    study_comment = "" : varchar(2000)
    study_ts = CURRENT_TIMESTAMP : datetime
    """

    class Trial(dj.Part):
        definition = """
        # one trial: its Optuna number, parameters and recipe keys (trained once per study seed)
        -> master
        trial_number : int32      # Optuna's trial number in the study
        ---
        params : <blob>           # {parameter path: value}, e.g. {"trainer.lr_init": 0.004}
        -> Dataset
        -> Model
        -> Trainer
        trial_ts = CURRENT_TIMESTAMP : datetime
        """


class PrunedModel(dj.Manual):
    definition = """
    # a model its study's pruner stopped: no weights; its job is left 'ignore' so it never runs again
    -> Dataset
    -> Model
    -> Trainer
    -> Seed
    ---
    epoch : int32                 # the last epoch trained
    history : <blob>              # the trainer's per-epoch history at that epoch
    reason : varchar(255)
    pruned_ts = CURRENT_TIMESTAMP : datetime
    """
