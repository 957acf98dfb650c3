"""The dashboard's pages, rendered from the tables: the same HTML for the web server and for ``--static``."""
import json
from pathlib import Path

import datajoint as dj
import jinja2

from ...tables import Study, TrainedModel
from . import data, figures

PAGES = ("index.html", "queue.html", "scores.html", "studies.html")
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=True, undefined=jinja2.StrictUndefined)
ENV.filters["config"] = lambda value: json.dumps(value, sort_keys=True, default=str)
ENV.filters["num"] = lambda value: "" if value is None else f"{value:.4f}"
ENV.filters["time"] = lambda value: "" if value is None else str(value)[:19]


def short_key(key) -> str:
    """A job's key for people: each function's last name with 8 characters of its hash, and the other values."""
    parts = [f"{key[name].rsplit('.', 1)[-1]} {key[name.replace('_fn', '_hash')][:8]}"
             for name in key if name.endswith("_fn")]
    parts += [f"{name} {value}" for name, value in key.items() if not name.endswith(("_fn", "_hash"))]
    return " · ".join(parts)


ENV.filters["key"] = short_key


def connection() -> str:
    """Who and where, never the password: ``user@host:port``."""
    return f"{dj.config['database.user']}@{dj.config['database.host']}:{dj.config['database.port']}"


def _render(template, root="", **context) -> str:
    return ENV.get_template(template).render(root=root, connection=connection(), **context)


def render(path: str) -> str | None:
    """The HTML of page ``path`` (e.g. ``scores.html``, ``models/<id>.html``), or None if there is no such page."""
    if path == "index.html":
        return _render("index.html", experiments=data.experiments(), recipes=data.recipes())
    if path == "queue.html":
        return _render("queue.html", tables=data.queue())
    if path == "scores.html":
        rows, measures, columns = data.scores()
        return _render("scores.html", rows=rows, measures=measures, columns=columns)
    if path == "studies.html":
        studies = data.studies() if Study.is_declared else []
        return _render("studies.html", studies=[{**s, "plot": figures.optimisation_history(s["trials"], s["name"]),
                                                 "params": figures.parameter_coordinates(s["trials"], s["name"])}
                                                for s in studies])
    if path.startswith("models/") and path.endswith(".html"):
        key = data.find_model(path.removeprefix("models/").removesuffix(".html"))
        if key is None:
            return None
        model = data.model(key)
        plots = {"curves": figures.training_curves(model["curves"]) if model["curves"] else "",
                 "units": figures.unit_histograms(model["units"]) if model["units"] else "",
                 "rf": figures.rf_positions(model["rf"]) if model["rf"] else ""}
        return _render("model.html", root="../", model=model, plots=plots)
    return None


def all_paths() -> list:
    """Every page: the overview pages and one per trained model."""
    return [*PAGES, *(f"models/{data.model_id(key)}.html" for key in TrainedModel.proj().to_dicts())]
