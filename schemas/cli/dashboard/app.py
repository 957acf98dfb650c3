"""The dashboard as a read-only web app (Starlette on uvicorn) or as static files."""
import logging
from pathlib import Path

import uvicorn
from plotly.offline import get_plotlyjs
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from . import pages

logger = logging.getLogger(__name__)
PLOTLY_JS = "static/plotly.min.js"


async def _page(request):
    path = request.path_params["path"]
    if path == PLOTLY_JS:
        return Response(get_plotlyjs(), media_type="text/javascript")
    html = pages.render(path)
    return HTMLResponse(html) if html is not None else HTMLResponse("no such page", status_code=404)


def create_app() -> Starlette:
    """The web app: every page of :mod:`.pages` under its file name, rendered from the database on each request."""
    return Starlette(routes=[Route("/", lambda request: RedirectResponse("/index.html")),
                             Route("/{path:path}", _page, methods=["GET"])])


def serve(host: str, port: int) -> None:
    """Serve the dashboard until interrupted."""
    logger.info("dashboard on http://%s:%d/ (read-only; Ctrl-C stops it)", host, port)
    uvicorn.run(create_app(), host=host, port=port, log_level="warning")


def write_static(folder) -> list:
    """Write every page and plotly.js under ``folder``; returns the pages' paths."""
    folder = Path(folder)
    (folder / PLOTLY_JS).parent.mkdir(parents=True, exist_ok=True)
    (folder / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
    written = []
    for path in pages.all_paths():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(pages.render(path), encoding="utf-8")
        written.append(folder / path)
    return written
