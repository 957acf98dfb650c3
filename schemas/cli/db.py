"""``v1fabrik db up / status / down``: the private local database server of this folder."""
import logging
import os

from ..server import local
from ..server.connection import reachable, settings

logger = logging.getLogger(__name__)


def add_command(subparsers):
    db = subparsers.add_parser("db", help="the private local database server")
    actions = db.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start it (idempotent) and write datajoint.json + .secrets/ here")
    up.add_argument("--backend", choices=local.BACKENDS, default="mariadb")
    up.set_defaults(run=_db_up)
    for name, run, text in [("status", _db_status, "report it"), ("down", _db_down, "stop it")]:
        action = actions.add_parser(name, help=text)
        action.add_argument("--backend", choices=local.BACKENDS, help="default: every backend")
        action.set_defaults(run=run)


def _db_up(args) -> int:
    if os.environ.get("DJ_HOST"):
        logger.info("DJ_HOST=%s is set: using that server and starting nothing.", os.environ["DJ_HOST"])
        return 0
    local.up(local.server(args.backend))
    return 0


def _db_status(args) -> int:
    """Exit code 0 when a server runs on the asked port (or DJ_HOST answers), 3 when none does."""
    if os.environ.get("DJ_HOST"):
        target = settings()
        up = reachable(target["host"], target["port"])
        print(f"DJ_HOST server {target['host']}:{target['port']}: {'reachable' if up else 'NOT reachable'}")
        return 0 if up else 3
    running = False
    for backend in [args.backend] if args.backend else local.BACKENDS:
        srv = local.server(backend)
        info = local.status(srv)
        if info and info["port"] != srv.port:
            print(f"{backend}: running on port {info['port']}, not on the asked port {srv.port} (DJ_PORT): "
                  "`v1fabrik db up` moves it")
        elif info:
            running = True
            print(f"{backend}: running, pid {info['pid']}, {info['host']}:{info['port']}, "
                  f"user {info['user']}, data in {info['folder']}")
        elif args.backend or srv.folder.exists():
            print(f"{backend}: not running ({srv.folder})")
    if not running and not args.backend:
        print("no local database server is running: start one with `v1fabrik db up`")
    return 0 if running else 3


def _db_down(args) -> int:
    for backend in [args.backend] if args.backend else local.BACKENDS:
        if not local.down(local.server(backend)) and args.backend:
            logger.info("The %s server was not running.", backend)
    return 0


