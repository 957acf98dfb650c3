"""``v1fabrik dashboard``: a read-only web view of the lab's experiments, job queue, scores, models and studies.

It reads the tables only (never the data files, never trains). :mod:`.data` queries, :mod:`.figures` draws
(Plotly), :mod:`.pages` renders the Jinja2 templates, :mod:`.app` serves them (Starlette) or writes them.
"""
from ... import activate
from . import app


def add_command(commands):
    dashboard = commands.add_parser("dashboard", help="a read-only web dashboard of the database")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8050, help="port to listen on (default 8050)")
    dashboard.add_argument("--static", metavar="DIR", help="write the pages as files into DIR instead of serving")
    dashboard.set_defaults(run=_run)


def _run(args) -> int:
    activate()
    if args.static:
        written = app.write_static(args.static)
        print(f"wrote {len(written)} pages to {args.static}; open {args.static}/index.html")
        return 0
    print(f"v1fabrik dashboard on http://{args.host}:{args.port}/ (read-only; Ctrl-C stops it)")
    app.serve(args.host, args.port)
    return 0
