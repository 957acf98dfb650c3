"""``v1fabrik scores``: the scores frame of :func:`schemas.tables.scores.scores_frame` as text or CSV."""
import pandas as pd


def format_scores(frame: pd.DataFrame, fmt="table") -> str:
    """The scores as an aligned text table or as CSV."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; use 'table' or 'csv'")
    if frame.empty:
        return "no trained models yet"
    return frame.to_string(index=False, float_format=lambda x: f"{x:.3f}")
