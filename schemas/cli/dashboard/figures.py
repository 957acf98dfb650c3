"""The dashboard's Plotly figures as HTML fragments (plotly.js itself is served once, as static/plotly.min.js)."""
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LAYOUT = {"height": 360, "margin": {"l": 50, "r": 20, "t": 40, "b": 45}, "template": "plotly_white"}


def _html(figure, div_id) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def training_curves(curves: dict) -> str:
    """One line per per-epoch series of the trainer's output."""
    figure = go.Figure([go.Scatter(x=list(range(1, len(v) + 1)), y=v, mode="lines+markers", name=name)
                        for name, v in curves.items()])
    figure.update_layout(title="training history", xaxis_title="epoch", showlegend=True, **LAYOUT)
    return _html(figure, "curves")


def unit_histograms(units: dict) -> str:
    """The distribution of each measure's per-neuron values, one panel per measure (their scales differ); values
    beyond Tukey's far-out fences (3 interquartile ranges past the quartiles) are drawn in the edge bins, so one
    neuron without explainable variance does not flatten the FEVE panel."""
    figure = make_subplots(rows=len(units), cols=1, subplot_titles=list(units), vertical_spacing=0.5 / len(units))
    for row, (name, values) in enumerate(units.items(), start=1):
        if values:
            q1, q3 = np.percentile(values, [25, 75])
            values = np.clip(values, q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1))
        figure.add_trace(go.Histogram(x=values, name=name, nbinsx=40, showlegend=False), row=row, col=1)
        figure.update_yaxes(title_text="neurons", row=row, col=1)
    figure.update_layout({**LAYOUT, "height": 60 + 200 * len(units)}, title="per-neuron values")
    return _html(figure, "units")


def rf_positions(rf: dict) -> str:
    """Where each readout looks, in its core output's grid; with the truth (synthetic data), the true centres and a
    line from each to its neuron's learned position."""
    traces = []
    for name, positions in rf.items():
        (x, y), true = positions["learned"], positions["true"]
        traces.append(go.Scatter(x=x, y=y, mode="markers", name=f"{name} learned", marker={"size": 5}))
        if true is not None:
            tx, ty = true
            traces.append(go.Scatter(x=tx, y=ty, mode="markers", name=f"{name} true",
                                     marker={"size": 6, "symbol": "x", "color": "black"}))
            traces.append(go.Scatter(x=[v for a, b in zip(x, tx) for v in (a, b, None)],
                                     y=[v for a, b in zip(y, ty) for v in (a, b, None)], mode="lines",
                                     line={"width": 0.5, "color": "grey"}, name=f"{name} error", hoverinfo="skip"))
    figure = go.Figure(traces)
    figure.update_layout(title="RF positions (core output grid, -1..1)", xaxis_title="x", yaxis_title="y",
                         yaxis_scaleanchor="x", **LAYOUT)
    return _html(figure, "rf")


def parameter_coordinates(trials: list, name: str) -> str:
    """Parallel coordinates of the finished trials' parameters and score (categorical values by their index);
    empty while no trial has finished."""
    done = [t for t in trials if t["score"] is not None]
    if not done:
        return ""
    dimensions = []
    for param in sorted({p for t in done for p in t["params"]}):
        values = [t["params"].get(param) for t in done]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            dimensions.append({"label": param, "values": values})
        else:
            labels = sorted({str(v) for v in values})
            dimensions.append({"label": param, "values": [labels.index(str(v)) for v in values],
                               "tickvals": list(range(len(labels))), "ticktext": labels})
    scores = [t["score"] for t in done]
    figure = go.Figure(go.Parcoords(dimensions=[*dimensions, {"label": "score", "values": scores}],
                                    line={"color": scores, "colorscale": "Viridis", "showscale": True}))
    figure.update_layout(title=f"parameters of {name}'s trials", **LAYOUT)
    return _html(figure, f"params-{name}")


def optimisation_history(trials: list, name: str) -> str:
    """Each finished trial's mean score and the best so far, over trial numbers."""
    done = [t for t in trials if t["score"] is not None]
    best, running = [], float("-inf")
    for trial in done:
        running = max(running, trial["score"])
        best.append(running)
    numbers = [t["number"] for t in done]
    figure = go.Figure([go.Scatter(x=numbers, y=[t["score"] for t in done], mode="markers", name="trial"),
                        go.Scatter(x=numbers, y=best, mode="lines", name="best so far", line={"shape": "hv"})])
    figure.update_layout(title=f"optimisation history of {name}", xaxis_title="trial", xaxis_dtick=1,
                         yaxis_title="score", **LAYOUT)
    return _html(figure, f"history-{name}")
