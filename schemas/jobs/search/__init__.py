"""Hyper-parameter search on the ordinary workers, with Optuna's study in the tables' database server.

- :mod:`.spec`: the study file (space, trials, seeds, sampler, pruner), checked before anything is registered;
- :mod:`.storage`: Optuna's RDB storage URL and schema (``<prefix>optuna``);
- :mod:`.register`: registering a study (Optuna study, ``Study`` row, experiment), all or nothing;
- :mod:`.trials`: asking for the next trial when a worker's queue is empty, and settling trials as jobs end;
- :mod:`.pruning`: each epoch's validation score reported to the trial, which may prune the job.
"""
