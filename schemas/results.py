"""``v1fabrik scores``: one row per trained model with its comments, seed and scores."""
import pandas as pd

from .recipes import Dataset, Experiment, Model, Trainer
from .scoring import SCORE_TABLES
from .trained import TrainedModel

COLUMNS = ["dataset", "model", "trainer", "seed", "validation", "test_correlation",
           "correlation_to_average", "feve", "oracle_correlation", "fraction_oracle"]


def scores_frame(experiment=None) -> pd.DataFrame:
    """Trained models (of ``experiment``, if given) with the aggregate of every score table; NaN where not scored yet."""
    trained = TrainedModel.proj("score")
    if experiment is not None:
        trained = trained & Experiment.combinations(experiment)
    query = (trained * Dataset.proj("dataset_comment") * Model.proj("model_comment")
             * Trainer.proj("trainer_comment"))
    frame = query.to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    for table in SCORE_TABLES:
        frame = frame.join(table.proj(table.measure).to_pandas(), how="left")
    frame = frame.reset_index().rename(columns={"dataset_comment": "dataset", "model_comment": "model",
                                                "trainer_comment": "trainer", "score": "validation"})
    return frame[COLUMNS].sort_values(["dataset", "model", "trainer", "seed"], ignore_index=True)


def format_scores(frame: pd.DataFrame, fmt="table") -> str:
    """The scores as an aligned text table or as CSV."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; use 'table' or 'csv'")
    if frame.empty:
        return "no trained models yet"
    return frame.to_string(index=False, float_format=lambda x: f"{x:.3f}")
