"""DataInfo: what a dataset's model function needs from its data, so a trained model opens without the files.

One row per Dataset, :func:`pipeline.datasets.data_info.data_info` of its dataloaders, built from
the dataset function and its config alone (as nnfabrik's DataInfo does). Workers populate it before
they train, so every dataset a worker meets gets its row once, old datasets included;
:meth:`DataInfo.of` computes a missing row on demand wherever the data files can be read.
"""
import logging

import datajoint as dj

from pipeline import builder
from pipeline.datasets.data_info import data_info

from .jobtable import OwnedJobs
from .recipes import Dataset

logger = logging.getLogger(__name__)


class DataInfo(OwnedJobs, dj.Computed):
    definition = """
    # what the model function needs from a dataset, per data key (pipeline.datasets.data_info)
    -> Dataset
    ---
    data_info : <blob>            # {data_key: {fields, dims, n_neurons, neurons, mean_responses, trials, ...}}
    datainfo_ts = CURRENT_TIMESTAMP : datetime
    """

    def make_fetch(self, key):
        """The dataset function and its config."""
        return Dataset().fn_config(key)

    def make_compute(self, key, dataset_fn, dataset_config):
        """Load the data once and describe it (no transaction open)."""
        return (data_info(builder.get_data(dataset_fn, dataset_config)),)

    def make_insert(self, key, info):
        self.insert1({**key, "data_info": info})

    @classmethod
    def of(cls, key) -> dict:
        """The data info of ``key``'s dataset; a missing one is read from the files (stored unless in a transaction)."""
        dataset = {name: key[name] for name in ("dataset_fn", "dataset_hash")}
        stored = (cls & dataset).to_arrays("data_info")
        if len(stored):
            return stored[0]
        logger.info("no DataInfo for %s yet: reading its data", dataset)
        try:
            if cls.connection.in_transaction:  # inside another table's make: compute only (workers store it)
                return data_info(Dataset().get_dataloader(dataset))
            cls.populate(dataset)
        except (OSError, ValueError) as error:
            culprit = f"dataset {dataset['dataset_fn']} {dataset['dataset_hash']}"
            raise LookupError(f"{culprit} has no DataInfo row and its data cannot be read here ({error}); "
                              "run DataInfo.populate() where its files are") from None
        return (cls & dataset).fetch1("data_info")
